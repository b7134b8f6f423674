"""A folder of volumes in the generic layout: 3D / 4D NIfTI, one file per sequence, a DICOM series;
masks checked against their image; resampling; each bad file named and the rest kept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medloop.data.volume_dataset import nifti_stem, read_volume_folder

CLASSES = ["benign", "malignant"]


def save(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def test_layouts_masks_labels_and_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    vol = rng.random((8, 8, 4)).astype(np.float32)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:5, 2:5, 1:3] = 1
    save(root / "images" / "a.nii.gz", vol)
    save(root / "masks" / "a.nii.gz", mask)
    save(root / "images" / "b.nii.gz", np.stack([vol, 2 * vol], -1))  # 4D: two sequences
    save(root / "images" / "flat.nii.gz", vol[:, :, :1].reshape(8, 8))  # 2D: named
    save(root / "images" / "c.nii.gz", vol)
    save(root / "masks" / "c.nii.gz", mask[:, :, :3], spacing=(1.0, 1.0, 2.0))  # mask on another grid
    raw = (root / "images" / "a.nii.gz").read_bytes()
    (root / "images" / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated
    (root / "labels.csv").write_text("image,label\na.nii.gz,malignant\nb,benign\nc,grade9\n")
    cases, bad = read_volume_folder(root, CLASSES)
    by = {c.case: c for c in cases}
    assert sorted(by) == ["a", "b"]
    assert by["a"].label == "malignant" and by["b"].label == "benign"
    assert by["a"].mask is not None and int(by["a"].mask.array.sum()) == 18 and by["b"].mask is None
    assert by["b"].image.array.shape == (8, 8, 4, 2) and by["a"].image.spacing == pytest.approx((1.0, 1.0, 2.0))
    problems = {Path(b.path.split(":")[0].split(" (")[0]).name: b.problem for b in bad}
    assert "expected a 3D volume" in problems["flat.nii.gz"]
    assert "truncated or corrupt" in problems["cut.nii.gz"] or "unreadable" in problems["cut.nii.gz"]
    assert "mask shape" in problems["c.nii.gz"]
    assert "unknown class 'grade9'" in problems["labels.csv"]


def test_one_file_per_sequence_and_resampling(tmp_path: Path) -> None:
    root = tmp_path / "seq"
    ramp = np.broadcast_to(np.arange(3, dtype=np.float32) * 2.0, (4, 4, 3)).copy()
    for seq, scale in (("t1", 1.0), ("flair", 3.0)):
        save(root / "images" / f"p1_{seq}.nii.gz", scale * ramp)
    save(root / "images" / "p2_t1.nii.gz", ramp)  # p2 has no flair: named, p1 kept
    labels = np.zeros((4, 4, 3), np.uint8)
    labels[:, :, 2] = 1
    save(root / "masks" / "p1.nii.gz", labels)
    cases, bad = read_volume_folder(root, CLASSES, sequences=["t1", "flair"], spacing=(1.0, 1.0, 1.0))
    assert [c.case for c in cases] == ["p1"]
    p1 = cases[0]
    assert p1.image.array.shape == (4, 4, 5, 2) and p1.mask.array.shape == (4, 4, 5)
    np.testing.assert_allclose(p1.image.array[1, 1, :, 0], [0, 1, 2, 3, 4], atol=1e-5)  # t1 first, resampled
    np.testing.assert_allclose(p1.image.array[..., 1], 3 * p1.image.array[..., 0], atol=1e-4)
    assert len(bad) == 1 and "flair missing" in bad[0].problem and bad[0].path.endswith("p2_t1.nii.gz")


def test_a_dicom_series_folder_is_a_case(tmp_path: Path) -> None:
    from dicom_files import series

    root = tmp_path / "dcm"
    series(root / "images" / "ct1", n=3)
    cases, bad = read_volume_folder(root, CLASSES)
    assert bad == [] and [c.case for c in cases] == ["ct1"] and cases[0].image.array.shape == (5, 6, 3)


def test_names_and_missing_layout() -> None:
    from medloop.data.errors import DataError

    assert nifti_stem("case.nii.gz") == "case" and nifti_stem("case.NII") == "case"
    with pytest.raises(DataError, match="expected a folder images/"):
        read_volume_folder("/nonexistent/ds", CLASSES)
