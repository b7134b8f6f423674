"""DICOM series -> canonical RAS+ volume: geometry against the DICOM closed form (LPS -> RAS flips),
slice order from positions, modality LUT, and each bad series named with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medloop.data.dicom_series import read_dicom_series
from medloop.data.errors import FileError

ROWS, COLS = 6, 5
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_slice(path: Path, k: int, *, z: float, iop=AXIAL, spacing=(0.7, 0.8), series: str = "1.2.3.4",
                shape=(ROWS, COLS), xy=(-10.0, 20.0)) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rows, cols = shape
    jj, ii = np.mgrid[0:rows, 0:cols]
    pixels = (100 * k + 10 * jj + ii).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series, "CT", k + 1
    ds.ImagePositionPatient = [xy[0], xy[1], z]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def series(folder: Path, n: int = 4, dz: float = 2.5, names=None, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        name = names[k] if names else f"slice{k:03d}.dcm"
        write_slice(folder / name, k, z=-30.0 + k * dz, **kw)
    return folder


def test_axial_series_geometry_values_and_order(tmp_path: Path) -> None:
    # file names in reverse order of position: the order must come from ImagePositionPatient
    vol = read_dicom_series(series(tmp_path / "s", names=[f"img{9 - k}.dcm" for k in range(4)]))
    assert vol.array.shape == (COLS, ROWS, 4) and vol.spacing == pytest.approx((0.8, 0.7, 2.5))
    # axial LPS: columns run to patient Left, rows to Posterior; RAS+ canonical flips both
    i, j, k = 1, 2, 3
    stored = 100 * k + 10 * j + i
    assert vol.array[COLS - 1 - i, ROWS - 1 - j, k] == stored - 1024  # modality LUT: HU
    # the affine maps a voxel to its DICOM position, in RAS (x, y negated)
    ijk = np.array([COLS - 1 - i, ROWS - 1 - j, k, 1.0])
    lps = np.array([-10.0 + i * 0.8, 20.0 + j * 0.7, -30.0 + k * 2.5])
    assert vol.affine @ ijk == pytest.approx([-lps[0], -lps[1], lps[2], 1.0])


def test_a_single_slice_is_a_volume_of_depth_one(tmp_path: Path) -> None:
    vol = read_dicom_series(series(tmp_path / "one", n=1))
    assert vol.array.shape == (COLS, ROWS, 1)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=2.5 * k) for k in (0, 1, 2, 4, 5)], "missing slice"),
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=2.5 * k, iop=AXIAL if k < 2 else (1, 0, 0, 0, 0, -1))
                for k in range(3)], "different orientations"),
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=2.5 * k, series="1.2.3" if k else "9.9") for k in range(3)],
     "2 series in one folder"),
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=0.0 if k < 2 else 2.5) for k in range(3)], "two slices at one"),
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=2.5 * k, shape=(ROWS, COLS + (k == 1))) for k in range(3)],
     "different sizes"),
    (lambda d: [write_slice(d / f"s{k}.dcm", k, z=2.5 * k, xy=(-10.0 + 3 * k, 20.0)) for k in range(3)],
     "not stacked along one line"),
])
def test_bad_series_are_named_with_their_reason(tmp_path: Path, make, reason: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    make(folder)
    with pytest.raises(FileError, match=reason) as err:
        read_dicom_series(folder)
    assert err.value.path == str(folder)


def test_a_stray_file_is_named(tmp_path: Path) -> None:
    folder = series(tmp_path / "s")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(FileError, match="not a readable DICOM file") as err:
        read_dicom_series(folder)
    assert err.value.path.endswith("notes.txt")
    with pytest.raises(FileError, match="not a folder"):
        read_dicom_series(folder / "slice000.dcm")
