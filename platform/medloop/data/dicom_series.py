"""Reading a DICOM series (one folder, one slice per file) into a :class:`~medloop.data.volumes.Volume`
in the same canonical RAS+ voxel order as NIfTI volumes, with the checks a CT / MRI series needs.

Geometry (DICOM PS3.3 C.7.6.2.1.1): a pixel at column ``i`` and row ``j`` of a slice lies at
``ImagePositionPatient + i * dc * X + j * dr * Y`` (LPS mm), where ``X`` / ``Y`` are the row / column
direction cosines of ``ImageOrientationPatient`` and ``(dr, dc)`` = ``PixelSpacing`` (between rows,
between columns). Slices are ordered by their position along the normal ``X x Y``, not by file name
or ``InstanceNumber``; the slice spacing is the distance between positions (``SliceThickness`` is
not a spacing). The LPS affine is flipped to RAS and reoriented with nibabel's
``as_closest_canonical``, as :func:`~medloop.data.volumes.read_nifti` does. Stored values go through
the modality LUT (``RescaleSlope`` / ``RescaleIntercept``: Hounsfield units for CT).

Refused, naming the folder (or file) and the reason: files that are not DICOM, no slice with pixel
data, more than one series, slices of different sizes, orientations or pixel spacings, two slices at one
position, a missing slice (a gap over 1.5 times the median spacing), slices not on one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medloop.data.errors import FileError
from medloop.data.volumes import Volume, spacing_of

#: a gap larger than this times the median slice spacing is a missing slice
GAP_FACTOR = 1.5


@dataclass(frozen=True)
class _Slice:
    path: Path
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,)
    spacing: tuple[float, float]  # (between rows, between columns)
    shape: tuple[int, int]  # (rows, columns)
    series: str
    dataset: Any  # the pydicom dataset, read once (pixels decoded when stacked)


def _header(path: Path) -> _Slice | None:
    """The slice geometry of ``path``; None for a DICOM file without pixel data (e.g. a DICOMDIR)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise FileError(str(path), f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "Rows" not in ds or "Columns" not in ds:
        return None
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise FileError(str(path), f"no {', '.join(missing)}: cannot place the slice in a volume")
    return _Slice(path=path, position=np.asarray(ds.ImagePositionPatient, np.float64),
                  orientation=np.asarray(ds.ImageOrientationPatient, np.float64),
                  spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                  shape=(int(ds.Rows), int(ds.Columns)), series=str(ds.get("SeriesInstanceUID", "")), dataset=ds)


def _pixels(s: _Slice) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        return np.asarray(apply_modality_lut(s.dataset.pixel_array, s.dataset), dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - pydicom's pixel handlers raise many kinds (missing codec, bad length)
        raise FileError(str(s.path), f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e


def _same(values: list[np.ndarray] | list[tuple], what: str, folder: Path, atol: float = 1e-4) -> None:
    first = np.asarray(values[0], np.float64)
    for v in values[1:]:
        if np.asarray(v).shape != first.shape or not np.allclose(np.asarray(v, np.float64), first, atol=atol):
            raise FileError(str(folder), f"slices with different {what} ({tuple(first)} and {tuple(np.asarray(v))})")


def read_dicom_series(folder: str | Path) -> Volume:
    """One DICOM series (every file of ``folder``) as a canonical RAS+ :class:`Volume`; see the module doc."""
    root = Path(folder)
    if not root.is_dir():
        raise FileError(str(root), "not a folder (a DICOM series is a folder of slice files)")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = [s for s in (_header(p) for p in files) if s is not None]
    if not slices:
        raise FileError(str(root), "no DICOM slice with pixel data")
    series = sorted({s.series for s in slices})
    if len(series) > 1:
        raise FileError(str(root), f"{len(series)} series in one folder ({', '.join(series[:3])}); one per folder")
    _same([s.shape for s in slices], "sizes (rows, columns)", root, atol=0)
    _same([s.orientation for s in slices], "orientations (ImageOrientationPatient)", root)
    _same([s.spacing for s in slices], "pixel spacings", root)
    x, y = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(x, y)
    along = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(along, kind="stable")
    slices, along = [slices[i] for i in order], along[order]
    if len(slices) > 1:
        steps = np.diff(along)
        if (steps < 1e-3).any():
            k = int(np.argmax(steps < 1e-3))
            raise FileError(str(root), f"two slices at one position ({slices[k].path.name}, {slices[k + 1].path.name})")
        dz = float(np.median(steps))
        if (steps > GAP_FACTOR * dz).any():
            k = int(np.argmax(steps > GAP_FACTOR * dz))
            raise FileError(str(root), f"missing slice(s) between {slices[k].path.name} and {slices[k + 1].path.name}"
                                       f" (gap {steps[k]:.2f} mm, spacing {dz:.2f} mm)")
        # positions must lie on one line along the normal (no in-plane shift between slices)
        offsets = np.array([s.position - slices[0].position for s in slices])
        off_line = offsets - np.outer(offsets @ normal, normal)
        if np.abs(off_line).max() > 0.5 * min(slices[0].spacing):
            raise FileError(str(root), "slices are not stacked along one line (shifted in-plane positions)")
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    else:
        step = normal * 1.0  # one slice: unit thickness
    dr, dc = slices[0].spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = x * dc, y * dr, step, slices[0].position
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    # pixel_array is (rows j, columns i): the volume is indexed [i, j, k]
    array = np.stack([_pixels(s).T for s in slices], axis=-1)
    if not np.isfinite(array).all():
        raise FileError(str(root), "holds NaN or infinite values")
    canon = nib.as_closest_canonical(nib.Nifti1Image(array, ras))
    data = np.asarray(canon.get_fdata(dtype=np.float32))
    return Volume(array=data, spacing=spacing_of(canon.affine), affine=np.asarray(canon.affine, np.float64),
                  path=str(root))
