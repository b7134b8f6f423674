"""DICOM series -> canonical RAS+ volume: geometry against the DICOM closed form (LPS -> RAS flips),
slice order from positions, modality LUT, and each bad series named with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import AXIAL, COLS, ROWS, series, write_slice  # tests/ is on sys.path

from medloop.data.dicom_series import read_dicom_series
from medloop.data.errors import FileError


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
