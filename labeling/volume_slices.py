"""Volumes in Label Studio: one axial slice per queued volume, and the annotated slice written back.

Label Studio has no 3D editor, so a queued volume becomes a 2D task: its **most informative slice**
(:func:`most_informative_slice`: the highest mean voxel uncertainty over the possible lesion and its
boundary band, the 2D ``seg_uncertainty`` of each slice) shown as a PNG of one sequence
(``labeling.slice_sequence``; :func:`slice_image`), the slice of the model's uncertainty map beside it, the
slices around it as pages annotators scroll through in Label Studio's multi-image viewer
(:func:`context_span`, :func:`context_page`), and the model's class and lesion mask on that slice as the
pre-annotation (``labeling.push.volume_view``).
Sync turns the annotated slice into a **partial label** of the volume (:func:`partial_label_map`): that slice
holds the annotator's mask and every other voxel is 255 (not annotated), which training leaves out of the
loss, as MTTU-Net (Cheng et al., IEEE TMI 2022) ignores missing labels. Slice indices are on the stored grid
(``Sample.depth`` slices); the model's maps are on ``data.volume_size`` and are resized to the stored grid
first.
"""

from __future__ import annotations

import numpy as np

NOT_ANNOTATED = 255


def resize_map(volume_map: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A model-grid float map (D', H', W') on the stored grid ``shape``, float32, trilinear as training resizes
    volumes (:func:`medloop.trainers.dataset.resize_volume`)."""
    from medloop.trainers.dataset import resize_volume

    return resize_volume(np.asarray(volume_map, np.float32)[None], shape)[0].astype(np.float32)


def slice_scores(umap: np.ndarray, pred_mask: np.ndarray, fg_prob: np.ndarray, band: int) -> np.ndarray:
    """(D,) the lesion uncertainty of every axial slice, each slice as a 2D image
    (:func:`medloop.trainers.uncertainty.measures.lesion_uncertainty`: mean voxel uncertainty over the
    possible lesion and a ``band``-pixel band around it; 0 where a slice may hold no lesion)."""
    import torch

    from medloop.trainers.uncertainty.measures import lesion_uncertainty

    scores = lesion_uncertainty(torch.from_numpy(np.asarray(umap, np.float32)),
                                torch.from_numpy(np.asarray(pred_mask, np.int64)), band,
                                fg_prob=torch.from_numpy(np.asarray(fg_prob, np.float32)))
    return scores.numpy()


def most_informative_slice(umap: np.ndarray, pred_mask: np.ndarray, fg_prob: np.ndarray, band: int) -> int:
    """The slice to annotate: the highest :func:`slice_scores`; when no slice may hold a lesion, the slice
    with the highest lesion probability (the model's best guess of where a missed lesion would be)."""
    scores = slice_scores(umap, pred_mask, fg_prob, band)
    if float(scores.max()) > 0.0:
        return int(np.argmax(scores))
    return int(np.argmax(np.asarray(fg_prob).reshape(len(scores), -1).max(1)))


def slice_image(volume: np.ndarray, index: int, sequence: int = 0) -> np.ndarray:
    """Slice ``index`` of a stored volume (C, D, H, W) as an 8-bit image (H, W): intensities in [0, 1]
    (a CT window) times 255; a z-scored MRI sequence clipped to [-3, 3] and mapped to 0..255."""
    s = np.asarray(volume[sequence, index], np.float32)
    if float(s.min()) >= 0.0 and float(s.max()) <= 1.0:
        scaled = s
    else:
        scaled = (np.clip(s, -3.0, 3.0) + 3.0) / 6.0
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def context_span(index: int, depth: int, radius: int) -> range:
    """The slices annotators can scroll through around slice ``index`` of a ``depth``-slice volume:
    ``index - radius`` .. ``index + radius``, cut at the volume's ends."""
    if not 0 <= index < depth:
        raise ValueError(f"slice {index} is outside a volume of {depth} slices")
    return range(max(0, index - radius), min(depth, index + radius + 1))


def context_page(volume: np.ndarray, index: int, gap: int = 2) -> np.ndarray:
    """One page of the scrollable context: slice ``index`` of a stored volume (C, D, H, W) in every sequence,
    side by side (each as :func:`slice_image`), ``gap`` grey columns between: an 8-bit image (H, C*W + (C-1)*gap)."""
    c, _, h, w = volume.shape
    out = np.full((h, c * w + (c - 1) * gap), 96, np.uint8)
    for seq in range(c):
        out[:, seq * (w + gap):seq * (w + gap) + w] = slice_image(volume, index, seq)
    return out


def partial_label_map(mask: np.ndarray, index: int, depth: int) -> np.ndarray:
    """A volume's label map from one annotated slice: slice ``index`` = ``mask`` (H, W): {0, 1}, or region
    labels 1..254 of a multi-region campaign, kept; every other voxel :data:`NOT_ANNOTATED`."""
    if not 0 <= index < depth:
        raise ValueError(f"slice {index} is outside a volume of {depth} slices")
    m = np.asarray(mask)
    out = np.full((depth, *m.shape), NOT_ANNOTATED, np.uint8)
    out[index] = np.where(m == NOT_ANNOTATED, 0, m).astype(np.uint8)
    return out


def annotated_slice(label_map: np.ndarray, index: int, *, regions: bool = False) -> np.ndarray:
    """Slice ``index`` of a volume's label map as a {0, 1} mask (255, not annotated, counts as background);
    ``regions``: with its region labels 1..254 kept instead."""
    s = np.asarray(label_map)[index]
    if regions:
        return np.where(s == NOT_ANNOTATED, 0, s).astype(np.uint8)
    return ((s > 0) & (s != NOT_ANNOTATED)).astype(np.uint8)
