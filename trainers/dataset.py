"""Training data from the ledger: samples decoded once into in-memory arrays.

:func:`load_arrays` reads the ledger and the image store and returns a :class:`SampleArrays`
(images ``(N, C, S, S)`` uint8, masks ``(N, S, S)`` uint8 with {0, 1} and **255 = ignore**,
labels ``(N,)`` int64 with **-1 = no class label**). A volume campaign (samples with a ``depth``)
gives images ``(N, C, D, H, W)`` float16 (the normalised intensities) and masks ``(N, D, H, W)`` at
``data.volume_size`` (:func:`model_volume`, :func:`volume_mask`). :class:`JointDataset` turns it into the
training batch of the contracts (``image`` float32 in [0, 1], ``label`` int64, ``mask`` int64),
with augmentation (flips, 90-degree rotations, small affine changes, intensity) applied identically to image and mask.

Which samples train (see docs/contracts.md): active human labels on every split except
``val`` and ``test`` (annotated pool cases included) plus active pseudo-labels; a pseudo-mask's
ignore map turns its pixels to 255. Validation: split ``val`` with active human labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from sqlalchemy import select

from medloop.config import Campaign, check_augmentations
from medloop.data.imagestore import ImageStore, mask_at
from medloop.ledger.schema import Label, Sample
from medloop.ledger.store import Ledger

IGNORE = 255
#: "affine" ranges: rotation in degrees, scale factor, shift as a share of the side
AFFINE_DEGREES, AFFINE_SCALE, AFFINE_SHIFT = 15.0, 0.1, 0.08


@dataclass
class SampleArrays:
    """Decoded samples; every array has the sample on dimension 0."""

    sample_ids: np.ndarray  # int64 (N,)
    uids: list[str]
    images: np.ndarray  # uint8 (N, C, S, S); volumes: float16 (N, C, D, H, W)
    masks: np.ndarray  # uint8 (N, S, S) / (N, D, H, W): 0 / 1 / 255 (ignore)
    labels: np.ndarray  # int64 (N,): class index, -1 = none
    kinds: list[str] = field(default_factory=list)  # "human" / "pseudo" / "" (unlabeled)
    spacing: np.ndarray | None = None  # volumes: float64 (N, 3) mm per voxel of the model's grid (D, H, W)

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> SampleArrays:
        idx = np.asarray(index, dtype=np.int64)
        return SampleArrays(
            self.sample_ids[idx],
            [self.uids[i] for i in idx],
            self.images[idx],
            self.masks[idx],
            self.labels[idx],
            [self.kinds[i] for i in idx] if self.kinds else [],
            None if self.spacing is None else self.spacing[idx],
        )

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes + self.masks.nbytes + self.labels.nbytes)


def empty_arrays(size: int, channels: int) -> SampleArrays:
    return SampleArrays(
        np.zeros(0, np.int64), [], np.zeros((0, channels, size, size), np.uint8),
        np.zeros((0, size, size), np.uint8), np.zeros(0, np.int64), [],
    )


# ---- decoding --------------------------------------------------------------------------------------


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 (H, W) / (H, W, 3) -> (C, size, size) uint8 (bilinear resize, grey/RGB conversion)."""
    img = Image.fromarray(np.ascontiguousarray(image))
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 mask (values kept, e.g. 0/1/255) -> (size, size) with nearest-neighbour resize."""
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)
    return mask


def model_input_path(image_path: str, size: int, channels: int) -> str:
    """Store-relative name of the cached model-size copy of a stored image (one folder per size and
    channels, so a new ``data.image_size`` builds a new cache and never reads a stale one)."""
    stem = image_path.removeprefix("images/").rsplit(".", 1)[0]
    return f"model-input/{size}x{size}-c{channels}/{stem}"


def model_image(store: ImageStore, image_path: str, size: int, channels: int) -> np.ndarray:
    """The image as the model sees it, (C, S, S) uint8: decoded and resized from the native image once,
    then read from the store's cache (``arrays/model-input/<S>x<S>-c<C>/``). Stored images never change
    under their path (it holds the content hash), so a cached copy cannot go stale."""
    name = model_input_path(image_path, size, channels)
    cached = store.path(f"arrays/{name}.npy")
    if cached.exists():
        try:
            arr = store.load_array(f"arrays/{name}.npy")
            if arr.shape == (channels, size, size) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt
    arr = fit_image(store.load_image(image_path), size, channels)
    store.put_array(name, arr)
    return arr


def resize_volume(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(C, D, H, W) -> (C, *size), trilinear (``torch.nn.functional.interpolate``, pixel centres aligned);
    unchanged when the size already matches. Masks: :func:`medloop.data.imagestore.mask_at` (nearest)."""
    target = tuple(int(x) for x in size)
    if tuple(volume.shape[1:]) == target:
        return volume
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    return torch.nn.functional.interpolate(x, size=target, mode="trilinear", align_corners=False)[0].numpy()


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """A batch as the model takes it, float32: stored uint8 images / 255 (to [0, 1]); volumes (float16, already
    normalised at ingest) as they are."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def model_volume(store: ImageStore, image_path: str, size: Sequence[int]) -> np.ndarray:
    """A stored volume as the model sees it: (C, D, H, W) float16 at ``size`` = ``data.volume_size``."""
    return resize_volume(store.load_volume(image_path), size).astype(np.float16)


def volume_mask(store: ImageStore, label: Label | None, size: Sequence[int], regions: bool = False) -> np.ndarray:
    """A volume's label map at ``size`` (nearest) as the training target: 0 background, 1 lesion (any region id
    1..254) or, with ``regions`` (``data.regions``), the region ids as they are; 255 = not annotated (or no mask
    at all)."""
    if label is None or not label.mask_path:
        return np.full(tuple(size), IGNORE, np.uint8)
    m = store.load_label_map(label.mask_path)
    target = m.astype(np.uint8) if regions else np.where(m == IGNORE, IGNORE, (m > 0).astype(np.uint8)).astype(np.uint8)
    if label.ignore_path:  # a pseudo-mask's uncertain voxels
        target[mask_at(store.load_ignore(label.ignore_path), target.shape) > 0] = IGNORE
    return mask_at(target, (int(size[0]), int(size[1]), int(size[2])))


def class_index(label: Label | None, classes: Sequence[str]) -> int:
    """The label's class index in ``classes``, -1 when it has none; an unknown class is a ``ValueError``."""
    if label is None or label.class_name is None:
        return -1
    if label.class_name not in classes:
        raise ValueError(f"label {label.id}: class {label.class_name!r} is not in the campaign classes {list(classes)}")
    return list(classes).index(label.class_name)


def decode_sample(
    store: ImageStore,
    image_path: str,
    label: Label | None,
    classes: Sequence[str],
    size: int,
    channels: int,
    regions: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One sample -> (image (C,S,S) uint8, mask (S,S) uint8 with 255 = ignore, class index or -1).

    The store keeps images and human / truth masks at the image's native size and pseudo-masks at
    the model size of the round that made them: every one is read at the requested size ``S``
    (image bilinear, masks and ignore maps nearest), so ``data.image_size`` can change without a
    new ingest or re-annotation. ``regions`` (``data.regions``): the mask keeps its region labels."""
    image = model_image(store, image_path, size, channels)
    mask = np.full((size, size), IGNORE, np.uint8)
    cls = class_index(label, classes)
    if label is not None:
        if label.mask_path:
            mask = (mask_at(store.load_label_map(label.mask_path), (size, size)).copy() if regions
                    else store.load_mask_at(label.mask_path, (size, size)).copy())
            if label.ignore_path:
                mask[mask_at(store.load_ignore(label.ignore_path), (size, size)) > 0] = IGNORE
    return image, mask, cls


def _stack(
    store: ImageStore, rows: Sequence[tuple[Sample, Label | None]], campaign: Campaign
) -> SampleArrays:
    size, channels = campaign.data.image_size, campaign.data.channels
    volume_size = campaign.data.volume_size
    ids, uids, imgs, masks, labels, kinds, spacing = [], [], [], [], [], [], []
    for sample, label in rows:
        if sample.depth is not None:  # a volume
            img = model_volume(store, sample.image_path, volume_size)
            mask = volume_mask(store, label, volume_size, campaign.data.regions is not None)
            cls = class_index(label, campaign.data.classes)
            stored = np.asarray((sample.depth, sample.height, sample.width), np.float64)
            spacing.append(np.asarray(sample.spacing or (1.0, 1.0, 1.0), np.float64) * stored / np.asarray(volume_size))
        else:
            img, mask, cls = decode_sample(store, sample.image_path, label, campaign.data.classes, size, channels,
                                           campaign.data.regions is not None)
        ids.append(sample.id)
        uids.append(sample.uid)
        imgs.append(img)
        masks.append(mask)
        labels.append(cls)
        kinds.append(label.kind if label is not None else "")
    if not ids:
        return empty_arrays(size, channels)
    return SampleArrays(
        np.asarray(ids, np.int64), uids, np.stack(imgs), np.stack(masks), np.asarray(labels, np.int64), kinds,
        np.stack(spacing) if spacing else None,
    )


# ---- from the ledger -------------------------------------------------------------------------------


def volume_channels(ledger: Ledger) -> int | None:
    """The number of sequences when the campaign holds volumes (ingest never mixes them with images), else None."""
    with ledger.reading() as s:
        return s.scalar(select(Sample.channels).where(Sample.depth.is_not(None)).limit(1))



def labeled_rows(ledger: Ledger, part: str) -> list[tuple[Sample, Label]]:
    """``part="train"``: human labels outside val/test + pseudo-labels; ``"val"``: human labels on val."""
    with ledger.reading() as s:
        q = select(Sample, Label).join(Label, Label.sample_id == Sample.id).where(Label.active.is_(True))
        if part == "train":
            q = q.where(Label.kind.in_(("human", "pseudo")), Sample.split.not_in(("val", "test")))
        elif part in ("val", "test"):
            q = q.where(Label.kind == "human", Sample.split == part)
        else:
            raise ValueError(f"unknown part {part!r}; expected 'train', 'val' or 'test'")
        rows = s.execute(q.order_by(Sample.id, Label.kind)).all()
    # a sample with both (should not happen: the ledger retires pseudo on human) keeps the human label
    chosen: dict[int, tuple[Sample, Label]] = {}
    for sample, label in rows:
        if sample.id not in chosen or label.kind == "human":
            chosen[sample.id] = (sample, label)
    return list(chosen.values())


def unlabeled_rows(ledger: Ledger) -> list[tuple[Sample, None]]:
    """Pool samples with neither an active human nor an active pseudo-label (semi-supervised training)."""
    with ledger.reading() as s:
        labeled = (
            select(Label.sample_id).where(Label.active.is_(True), Label.kind.in_(("human", "pseudo"))).scalar_subquery()
        )
        query = select(Sample).where(Sample.split == "pool", Sample.id.not_in(labeled)).order_by(Sample.id)
        rows = s.scalars(query).all()
    return [(r, None) for r in rows]


def load_arrays(campaign: Campaign, ledger: Ledger, part: str) -> SampleArrays:
    """Decode the training (``"train"``), validation (``"val"``), test (``"test"``) or unlabeled
    (``"unlabeled"``: :func:`unlabeled_rows`) set once into memory."""
    store = ImageStore(campaign.store)
    if part == "unlabeled":
        return _stack(store, unlabeled_rows(ledger), campaign)
    return _stack(store, labeled_rows(ledger, part), campaign)


def load_samples(campaign: Campaign, ledger: Ledger, sample_ids: Sequence[int]) -> SampleArrays:
    """Decode given samples' images (no labels: masks all 255, labels -1), e.g. for scoring."""
    with ledger.reading() as s:
        rows = s.scalars(select(Sample).where(Sample.id.in_(list(sample_ids))).order_by(Sample.id)).all()
    return _stack(ImageStore(campaign.store), [(r, None) for r in rows], campaign)


# ---- torch Dataset + augmentation ----------------------------------------------------------------------


@dataclass
class Augment:
    """Random flips, 90-degree rotations, small affine changes and intensity changes (gamma, contrast,
    brightness). ``hflip`` flips left-right only (ignored when ``flip`` is on)."""

    flip: bool = True
    rotate: bool = True
    intensity: bool = True
    intensity_strength: float = 0.2
    hflip: bool = False
    affine: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Augment | None:
        names = check_augmentations(names)
        if not names:
            return None
        return cls(flip="flip" in names, rotate="rotate" in names, intensity="intensity" in names,
                   hflip="hflip" in names, affine="affine" in names)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """image (C, H, W) float32 in [0, 1], mask (H, W) -- or a volume (C, D, H, W), mask (D, H, W): the same
        geometric change for both (flips of the columns and rows, and for a volume of the slices; 90-degree
        rotations in the row / column plane, only by 180 degrees when it is not square). A volume whose
        intensities are not in [0, 1] (an MRI z-score) gets contrast and brightness changes without gamma or clip."""
        volume = image.ndim == 4
        if self.flip:
            if rng.random() < 0.5:
                image, mask = image[..., ::-1], mask[..., ::-1]
            if rng.random() < 0.5:
                image, mask = image[..., ::-1, :], mask[..., ::-1, :]
            if volume and rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[::-1]
        elif self.hflip and rng.random() < 0.5:
            image, mask = image[..., ::-1], mask[..., ::-1]
        if self.affine and not volume:
            image, mask = random_affine(image, mask, rng)
        if self.rotate:
            k = int(rng.integers(0, 4))
            if image.shape[-1] != image.shape[-2] and k != 2:
                k = 0  # a quarter turn would change a non-square plane's shape
            if k:
                image, mask = np.rot90(image, k, axes=(-2, -1)), np.rot90(mask, k, axes=(-2, -1))
        if self.intensity:
            s = self.intensity_strength
            gamma = float(np.exp(rng.uniform(-s, s)))
            contrast = float(rng.uniform(1 - s, 1 + s))
            bright = float(rng.uniform(-s / 2, s / 2))
            if float(image.min()) >= 0.0 and float(image.max()) <= 1.0:
                image = np.clip((image**gamma - 0.5) * contrast + 0.5 + bright, 0.0, 1.0)
            else:
                image = image * contrast + bright
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def random_affine(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small rotation (+-``AFFINE_DEGREES``), isotropic scale (1 +- ``AFFINE_SCALE``) and shift (+-
    ``AFFINE_SHIFT`` of the side) about the centre of a 2D image (C, H, W) and its mask (H, W): bilinear for
    the image with the border pixels repeated, nearest for the mask (so 255 = ignore stays 255), with
    scipy.ndimage."""
    h, w = image.shape[-2:]
    angle = np.deg2rad(rng.uniform(-AFFINE_DEGREES, AFFINE_DEGREES))
    scale = rng.uniform(1.0 - AFFINE_SCALE, 1.0 + AFFINE_SCALE)
    shift = rng.uniform(-AFFINE_SHIFT, AFFINE_SHIFT, size=2) * np.array([h, w])
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])  # output (row, col) -> input, about the centre
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - matrix @ (centre + shift)
    warped = np.stack([ndimage.affine_transform(channel, matrix, offset, order=1, mode="nearest")
                       for channel in image])
    warped_mask = ndimage.affine_transform(mask, matrix, offset, order=0, mode="nearest")
    return warped.astype(np.float32), warped_mask.astype(mask.dtype)


#: share of training patches centred on a lesion voxel (nnU-Net's foreground oversampling is a third; lesions
#: in a large volume are small, so half)
LESION_PATCHES = 0.5


def patch_corner(mask: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                 lesion_share: float = LESION_PATCHES) -> tuple[int, ...]:
    """Where a training patch starts in a (D, H, W) grid: with probability ``lesion_share`` centred on a voxel
    drawn among the lesion voxels (labels 1..254; 255 is not annotated), else anywhere; always inside."""
    shape = mask.shape
    top = [max(0, int(n) - int(p)) for n, p in zip(shape, patch)]
    if rng.random() < lesion_share:
        lesion = np.flatnonzero((mask > 0) & (mask != IGNORE))
        if lesion.size:
            centre = np.unravel_index(int(lesion[int(rng.integers(lesion.size))]), shape)
            return tuple(int(np.clip(c - int(p) // 2, 0, t)) for c, p, t in zip(centre, patch, top))
    return tuple(int(rng.integers(0, t + 1)) for t in top)


class JointDataset(torch.utils.data.Dataset):
    """Items are dicts: ``image`` float32 (C,H,W) in [0,1], ``label`` int64, ``mask`` int64 (H,W), ``index``.

    ``length`` > ``len(arrays)`` repeats the samples (item ``i`` is sample ``i % len(arrays)``); every
    item draws its own augmentation, so the repeats of a sample differ. ``index`` is the sample's.
    ``patch`` (volumes, ``data.patch_size``): each item is a random patch of that size (:func:`patch_corner`),
    cut before the augmentation."""

    def __init__(self, arrays: SampleArrays, augment: Augment | None = None, seed: int = 0,
                 length: int | None = None, patch: Sequence[int] | None = None) -> None:
        if length is not None and length < len(arrays):
            raise ValueError(f"length {length} is below the {len(arrays)} samples")
        self.arrays = arrays
        self.augment = augment
        self.seed = seed
        self.length = len(arrays) if length is None else length
        self.patch = None if patch is None else tuple(int(p) for p in patch)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (called once per epoch by the training loops)."""
        self._epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not 0 <= item < self.length:
            raise IndexError(item)
        i = item % len(self.arrays)
        stored = self.arrays.images[i]
        mask = self.arrays.masks[i]
        rng = np.random.default_rng((self.seed, self._epoch, int(item)))
        if self.patch is not None and stored.ndim == 4:  # cut first: only the patch is converted to float
            corner = patch_corner(mask, self.patch, rng)
            box = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
            stored, mask = stored[(slice(None), *box)], mask[box]
        image = stored.astype(np.float32) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float32)
        if self.augment is not None:
            image, mask = self.augment(image, mask, rng)
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "label": torch.tensor(int(self.arrays.labels[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }
