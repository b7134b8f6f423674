"""Reading 3D / 4D NIfTI volumes, checking masks against them, intensity normalisation and
patient-level splits of the LIDC nodule crops. I/O (nibabel) at the top, pure functions below.

Arrays are in nibabel's canonical RAS+ voxel order after :func:`read_nifti`
(``nibabel.as_closest_canonical``): increasing array index 0 / 1 / 2 goes towards the patient's
Right / Anterior / Superior. A 4D file keeps its sequences on the last axis (the Medical
Segmentation Decathlon layout). ``spacing`` is in mm along the three array axes.
Volume ingest (:mod:`medloop.data.volume_ingest`) builds on these; see docs/volumes.md.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medloop.data.errors import FileError
from medloop.data.records import NIFTI_SUFFIXES
from medloop.data.splits import assign_splits


@dataclass(frozen=True)
class Volume:
    """A volume in canonical RAS+ voxel order.

    array: (X, Y, Z) or (X, Y, Z, S) with S sequences; spacing: mm per array axis (3 values);
    affine: 4x4 voxel -> world (RAS mm) of ``array``; path: the file it came from.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str

    @property
    def shape3d(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each array axis: the norms of the affine's first three columns."""
    s = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    return (float(s[0]), float(s[1]), float(s[2]))


def _load_canonical(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The canonical image and its data as float32 (scl_slope / scl_inter applied); clear errors."""
    if not path.is_file():
        raise FileError(str(path), "no such file")
    if not is_nifti(path):
        raise FileError(str(path), f"not a NIfTI file (expected one of {', '.join(NIFTI_SUFFIXES)})")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise FileError(str(path), f"not a NIfTI image ({type(img).__name__})")
        canon = nib.as_closest_canonical(img)
        data = np.asarray(canon.get_fdata(dtype=np.float32))
    except FileError:
        raise
    except (EOFError, zlib.error) as e:
        raise FileError(str(path), f"truncated or corrupt compressed NIfTI ({type(e).__name__}: {e})") from e
    except (ImageFileError, OSError, ValueError) as e:
        raise FileError(str(path), f"unreadable NIfTI ({type(e).__name__}: {e}); truncated or not NIfTI?") from e
    if data.ndim not in (3, 4):
        raise FileError(str(path), f"expected a 3D volume or 4D (sequences on the 4th axis), got shape {data.shape}")
    if min(data.shape) < 1:
        raise FileError(str(path), f"empty volume, shape {data.shape}")
    if not np.isfinite(data).all():
        raise FileError(str(path), "holds NaN or infinite values")
    return canon, data


def read_nifti(path: str | Path) -> Volume:
    """Read a .nii / .nii.gz (3D, or 4D with sequences on the 4th axis), reoriented to canonical RAS+.

    Raises :class:`medloop.data.errors.FileError` naming the file for a missing, truncated,
    non-NIfTI, 2D or 5D+ file.
    """
    p = Path(path)
    canon, data = _load_canonical(p)
    return Volume(array=data, spacing=spacing_of(canon.affine), affine=np.asarray(canon.affine, np.float64),
                  path=str(p))


def check_mask(mask: Volume, image: Volume, atol: float = 1e-3) -> None:
    """A mask must have its image's 3D shape and affine (within ``atol`` mm per entry); else a
    :class:`FileError` naming both files and the difference."""
    if mask.array.ndim != 3:
        raise FileError(mask.path, f"a mask must be 3D, got shape {mask.array.shape} (image {image.path})")
    if mask.shape3d != image.shape3d:
        raise FileError(mask.path, f"mask shape {mask.shape3d} differs from its image {image.path} {image.shape3d}")
    diff = float(np.abs(mask.affine - image.affine).max())
    if diff > atol:
        raise FileError(mask.path, f"mask affine differs from its image {image.path} by up to {diff:.4g} mm "
                                   f"(tolerance {atol:g}):\nmask\n{mask.affine}\nimage\n{image.affine}")


def read_mask(path: str | Path, image: Volume, atol: float = 1e-3) -> Volume:
    """Read a label mask (integers 0..255, 255 = ignore) and check it against ``image`` (:func:`check_mask`).
    The array is uint8 in the image's canonical voxel order."""
    m = read_nifti(path)
    check_mask(m, image, atol)
    a = m.array
    if not np.array_equal(a, np.rint(a)) or a.min() < 0 or a.max() > 255:
        raise FileError(m.path, f"a mask must hold integer labels 0..255, got values in [{a.min():g}, {a.max():g}]")
    return Volume(array=a.astype(np.uint8), spacing=m.spacing, affine=m.affine, path=m.path)


def stack_sequences(volumes: Mapping[str, Volume], order: Sequence[str]) -> Volume:
    """One case's single-sequence volumes (``<case>_<sequence>.nii.gz``) as one (X, Y, Z, S) volume,
    sequences in ``order`` (e.g. ``data.sequences = ["t1", "t1ce", "t2", "flair"]``). Every sequence
    must be present and 3D, with the first one's shape and affine (co-registered); else a
    :class:`FileError` naming the files."""
    missing = [name for name in order if name not in volumes]
    if missing:
        where = next(iter(volumes.values())).path if volumes else "?"
        raise FileError(where, f"sequence(s) {', '.join(missing)} missing for this case (expected {list(order)})")
    first = volumes[order[0]]
    for name in order:
        v = volumes[name]
        if v.array.ndim != 3:
            raise FileError(v.path, f"sequence {name!r}: expected one 3D volume per file, got shape {v.array.shape}")
        if v.shape3d != first.shape3d or float(np.abs(v.affine - first.affine).max()) > 1e-3:
            raise FileError(v.path, f"sequence {name!r} is not on the grid of {first.path} (shape {v.shape3d} vs "
                                    f"{first.shape3d}, or another affine): the sequences must be co-registered")
    array = np.stack([volumes[name].array for name in order], axis=-1).astype(np.float32)
    return Volume(array=array, spacing=first.spacing, affine=first.affine, path=first.path)


def resample(volume: Volume, spacing: Sequence[float], *, mask: bool = False) -> Volume:
    """``volume`` on a grid of ``spacing`` mm per axis over the same field of view (MONAI's ``Spacing``:
    trilinear for images, nearest neighbour for masks, which keeps their labels); a 4D volume's
    sequences are resampled alike. The affine keeps the orientation and origin."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    target = tuple(float(x) for x in spacing)
    if len(target) != 3 or min(target) <= 0:
        raise ValueError(f"spacing: three positive millimetre values, got {spacing!r}")
    channels = volume.array[None] if volume.array.ndim == 3 else np.moveaxis(volume.array, -1, 0)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32)),
                     affine=torch.from_numpy(volume.affine))
    out = Spacing(pixdim=target, mode="nearest" if mask else "bilinear", align_corners=True)(img)
    if not isinstance(out, MetaTensor):  # MONAI keeps the affine on its MetaTensor
        raise TypeError(f"monai Spacing returned {type(out).__name__}, not a MetaTensor")
    data = np.asarray(out.detach().cpu().numpy())
    array = data[0] if volume.array.ndim == 3 else np.moveaxis(data, 0, -1)
    if mask:
        array = np.rint(array).astype(volume.array.dtype)
    affine = np.asarray(out.affine.detach().cpu().numpy(), dtype=np.float64)
    return Volume(array=array.astype(volume.array.dtype if mask else np.float32), spacing=spacing_of(affine),
                  affine=affine, path=volume.path)


# ---- intensity normalisation (pure) -------------------------------------------------------------------------------

def ct_window(hu: np.ndarray, level: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """CT windowing: Hounsfield units clipped to ``[level - width/2, level + width/2]`` and mapped
    linearly to [0, 1] (float32). Defaults: the lung window (L -600, W 1500); soft tissue is L 40, W 400."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def body_mask(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """The body of a 3D MRI volume: voxels brighter than ``threshold`` (the background is ~0 in
    skull-stripped / bias-corrected MRI such as BraTS)."""
    return np.asarray(x) > threshold


def zscore_within_body(x: np.ndarray, body: np.ndarray | None = None, threshold: float = 0.0) -> np.ndarray:
    """MRI normalisation: ``(x - mean_body) / std_body`` inside the body, 0 outside (float32).

    ``x`` 3D, or 4D with sequences on the last axis (each sequence normalised on its own, with its
    own body mask unless ``body`` is given). A body with fewer than two voxels or zero spread is an error.
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 4:
        return np.stack([zscore_within_body(a[..., s], body, threshold) for s in range(a.shape[-1])], -1)
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume or 4D (sequences last), got shape {a.shape}")
    m = body_mask(a, threshold) if body is None else np.asarray(body, bool)
    if m.shape != a.shape:
        raise ValueError(f"body mask shape {m.shape} differs from the volume {a.shape}")
    vals = a[m]
    if vals.size < 2 or float(vals.std()) == 0.0:
        raise ValueError(f"cannot z-score: the body has {vals.size} voxels with zero spread (threshold {threshold})")
    out = np.zeros_like(a)
    out[m] = (vals - vals.mean()) / vals.std()
    return out


# ---- LIDC patient-level split (pure) ------------------------------------------------------------------------------

_LIDC = re.compile(r"^(?P<patient>.+?)_R_(?P<nodule>\d+)(?:\.nii(?:\.gz)?)?$")


def lidc_patient(name: str) -> str:
    """The patient of an LIDC nodule crop ``<patient>_R_<nodule>[.nii.gz]``, e.g. LIDC-IDRI-0003."""
    m = _LIDC.match(Path(name).name)
    if m is None:
        raise ValueError(f"{name!r}: not an LIDC nodule name '<patient>_R_<nodule>.nii.gz'")
    return m.group("patient")


def patient_split(
    names: Sequence[str],
    labels: Sequence[str | None],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    unlabeled_fraction: float = 0.0,
) -> list[str]:
    """Split names ("train", "val", "test", "pool") with every patient's nodules in one split,
    stratified by label as far as whole patients allow, deterministic for a ``seed``
    (:func:`medloop.data.splits.assign_splits` with the patient as the group)."""
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names for {len(labels)} labels")
    patients = [lidc_patient(n) for n in names]
    ids = {p: i for i, p in enumerate(dict.fromkeys(patients))}
    groups = [ids[p] for p in patients]
    return assign_splits(list(labels), fractions, unlabeled_fraction, seed, groups=groups)
