"""Volume reading (platform/medloop/data/volumes.py): canonical orientation, spacing, mask checks,
truncated files, CT windowing, MRI z-score, LIDC patient split; real LIDC files when present."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medloop.data.errors import FileError
from medloop.data.volumes import (
    check_mask,
    ct_window,
    lidc_patient,
    patient_split,
    read_mask,
    read_nifti,
    zscore_within_body,
)

LIDC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lidc_nodules"


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# x flipped (L), y and z as is, anisotropic spacing 2 x 0.5 x 3 mm
FLIPPED = np.array([[-2.0, 0, 0, 10], [0, 0.5, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def test_flipped_anisotropic_volume_is_read_in_canonical_orientation(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    assert nib.aff2axcodes(FLIPPED) == ("L", "A", "S")
    v = read_nifti(write(tmp_path / "ct.nii.gz", data, FLIPPED))
    assert v.array.shape == (4, 5, 6) and v.array.dtype == np.float32
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    assert v.spacing == pytest.approx((2.0, 0.5, 3.0))
    # the known voxel: file voxel (3, 1, 2) is canonical voxel (0, 1, 2), at the same world position
    assert v.array[0, 1, 2] == data[3, 1, 2]
    assert np.allclose(v.affine @ [0, 1, 2, 1], FLIPPED @ [3, 1, 2, 1])
    assert np.array_equal(v.array, data[::-1].astype(np.float32))


def test_permuted_axes_and_4d_sequences(tmp_path: Path) -> None:
    """A file stored as (S, R, A) axes with 2 sequences on the 4th axis: canonical is (R, A, S) + sequences."""
    aff = np.array([[0, 1.5, 0, 0], [0, 0, 0.8, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])  # i->S, j->R, k->A
    data = np.random.default_rng(0).normal(size=(3, 4, 5, 2)).astype(np.float32)
    v = read_nifti(write(tmp_path / "mr.nii", data, aff))
    assert v.array.shape == (4, 5, 3, 2)
    assert v.spacing == pytest.approx((1.5, 0.8, 2.5))
    assert np.allclose(v.array, data.transpose(1, 2, 0, 3))
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")


def test_truncated_gz_2d_and_missing_files_are_named(tmp_path: Path) -> None:
    good = write(tmp_path / "full.nii.gz", np.random.default_rng(1).normal(size=(32, 32, 16)).astype(np.float32),
                 np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "case7.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileError, match=r"case7\.nii\.gz: truncated or corrupt") as e:
        read_nifti(bad)
    assert e.value.path == str(bad)
    flat = write(tmp_path / "slice.nii.gz", np.zeros((8, 8), np.float32), np.eye(4))
    with pytest.raises(FileError, match=r"slice\.nii\.gz: expected a 3D volume or 4D"):
        read_nifti(flat)
    with pytest.raises(FileError, match=r"absent\.nii\.gz: no such file"):
        read_nifti(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileError, match="not a NIfTI file"):
        read_nifti(tmp_path / "notes.txt")


def test_mask_must_match_its_image(tmp_path: Path) -> None:
    img = read_nifti(write(tmp_path / "img.nii.gz", np.zeros((6, 7, 8), np.int16), FLIPPED))
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[5, 1, 2] = 1  # file voxel (5, 1, 2) -> canonical (0, 1, 2): the mask is flipped like its image
    m = read_mask(write(tmp_path / "ok.nii.gz", labels, FLIPPED), img)
    assert m.array.dtype == np.uint8 and m.array[0, 1, 2] == 1 and m.array.sum() == 1
    shifted = FLIPPED.copy()
    shifted[0, 3] += 1.0  # origin 1 mm away
    with pytest.raises(FileError, match=r"moved\.nii\.gz: mask affine differs from its image .*img\.nii\.gz"):
        read_mask(write(tmp_path / "moved.nii.gz", labels, shifted), img)
    with pytest.raises(FileError, match=r"small\.nii\.gz: mask shape \(6, 7, 7\) differs from its image .*img"):
        read_mask(write(tmp_path / "small.nii.gz", labels[:, :, :7], FLIPPED), img)
    with pytest.raises(FileError, match="integer labels"):
        read_mask(write(tmp_path / "soft.nii.gz", labels.astype(np.float32) * 0.5, FLIPPED), img)
    # within tolerance is fine (float32 header rounding)
    near = FLIPPED.copy()
    near[1, 3] += 1e-5
    check_mask(read_nifti(write(tmp_path / "near.nii.gz", labels, near)), img)


def test_ct_window_closed_form() -> None:
    hu = np.array([-1000, -160, 40, 240, 3000])
    assert ct_window(hu, level=40, width=400).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert ct_window(np.array([-1350, -600, 150])).tolist() == pytest.approx([0.0, 0.5, 1.0])  # lung window
    with pytest.raises(ValueError, match="width must be > 0"):
        ct_window(hu, width=0)


def test_zscore_within_body_per_sequence() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((10, 10, 10, 2), np.float32)
    x[2:8, 2:8, 2:8, 0] = rng.normal(100, 20, size=(6, 6, 6)).clip(1)
    x[3:9, 3:9, 3:9, 1] = rng.normal(500, 5, size=(6, 6, 6)).clip(1)
    z = zscore_within_body(x)
    for s in range(2):
        body = x[..., s] > 0
        assert z[..., s][body].mean() == pytest.approx(0.0, abs=1e-5)
        assert z[..., s][body].std() == pytest.approx(1.0, abs=1e-5)
        assert (z[..., s][~body] == 0).all()
    with pytest.raises(ValueError, match="cannot z-score"):
        zscore_within_body(np.zeros((4, 4, 4)))


def test_lidc_patient_split_keeps_patients_together_synthetic() -> None:
    names = [f"LIDC-IDRI-{p:04d}_R_{n}.nii.gz" for p in range(40) for n in range(1 + p % 3)]
    labels = ["malignant" if (i % 3 == 0) else "benign" for i in range(len(names))]
    assert lidc_patient("LIDC-IDRI-0003_R_12.nii.gz") == lidc_patient("LIDC-IDRI-0003_R_2") == "LIDC-IDRI-0003"
    split = patient_split(names, labels, seed=3)
    assert split == patient_split(names, labels, seed=3)  # deterministic
    assert split != patient_split(names, labels, seed=4)
    by_patient = defaultdict(set)
    for n, s in zip(names, split):
        by_patient[lidc_patient(n)].add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    with pytest.raises(ValueError, match="not an LIDC nodule name"):
        lidc_patient("case_1.nii.gz")


# ---- real LIDC crops (skipped when the shared data are absent) ----------------------------------------------------

needs_lidc = pytest.mark.skipif(not (LIDC / "labels.csv").is_file(), reason=f"no LIDC data at {LIDC}")


def lidc_labels() -> list[tuple[str, str]]:
    with open(LIDC / "labels.csv", newline="") as f:
        return [(r["image"], r["label"]) for r in csv.DictReader(f)]


@needs_lidc
def test_real_lidc_volumes_hu_range_and_masks() -> None:
    rows = lidc_labels()
    for name, _ in rows[:: len(rows) // 5][:5]:
        img = read_nifti(LIDC / "images" / name)
        mask = read_mask(LIDC / "masks" / name, img)
        assert img.array.ndim == 3 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert -1100 <= img.array.min() < -500  # lung air around the nodule
        assert img.array.max() <= 4000
        assert all(0.3 < s < 5.0 for s in img.spacing)
        assert set(np.unique(mask.array)) <= {0, 1} and mask.array.any()
        assert img.array[mask.array == 1].mean() > img.array[mask.array == 0].mean()  # nodule denser than lung


@needs_lidc
def test_real_lidc_patient_split_has_no_patient_in_two_splits() -> None:
    rows = lidc_labels()
    names, labels = [r[0] for r in rows], [r[1] for r in rows]
    split = patient_split(names, labels, seed=0)
    where: dict[str, set[str]] = defaultdict(set)
    for n, s in zip(names, split):
        where[lidc_patient(n)].add(s)
    assert len(where) == 441
    assert all(len(s) == 1 for s in where.values())
    counts = Counter(split)
    assert set(counts) == {"train", "val", "test"}
    assert counts["train"] / len(names) == pytest.approx(0.7, abs=0.03)
    overall = labels.count("malignant") / len(labels)
    for part in ("train", "val", "test"):
        ls = [lab for lab, s in zip(labels, split) if s == part]
        assert ls.count("malignant") / len(ls) == pytest.approx(overall, abs=0.06)


# ---- sequences of one case, resampling (MONAI Spacing) ---------------------------------------------------------


def _vol(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), path: str = "v.nii.gz"):
    from medloop.data.volumes import Volume

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return Volume(array=array, spacing=tuple(spacing), affine=affine, path=path)


def test_resample_to_a_finer_slice_spacing_interpolates_linearly_and_keeps_the_grid() -> None:
    from medloop.data.volumes import resample

    z_mm = np.arange(3, dtype=np.float32) * 2.0  # slices 2 mm apart; the value is the slice's z in mm
    image = _vol(np.broadcast_to(z_mm, (4, 5, 3)).copy(), spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 10.0))
    out = resample(image, (1.0, 1.0, 1.0))
    assert out.array.shape == (4, 5, 5) and out.spacing == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_allclose(out.array[2, 3], [0.0, 1.0, 2.0, 3.0, 4.0], atol=1e-5)  # a linear ramp stays exact
    np.testing.assert_allclose(out.affine[:3, 3], [5.0, -3.0, 10.0])  # same origin and field of view
    labels = np.zeros((4, 5, 3), np.uint8)
    labels[:, :, 1] = 2
    labels[1, 1, 2] = 1
    m = resample(_vol(labels, spacing=(1.0, 1.0, 2.0)), (1.0, 1.0, 1.0), mask=True)
    assert m.array.dtype == np.uint8 and set(np.unique(m.array)) <= {0, 1, 2} and (m.array == 2).any()
    seqs = resample(_vol(np.stack([image.array, 2 * image.array], -1), spacing=(1.0, 1.0, 2.0)), (1.0, 1.0, 1.0))
    assert seqs.array.shape == (4, 5, 5, 2)
    np.testing.assert_allclose(seqs.array[..., 1], 2 * seqs.array[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match="three positive"):
        resample(image, (1.0, 0.0, 1.0))


def test_stack_sequences_in_the_campaign_order_and_refuses_a_misaligned_one() -> None:
    from medloop.data.errors import FileError
    from medloop.data.volumes import stack_sequences

    a, b = np.zeros((3, 3, 2), np.float32), np.ones((3, 3, 2), np.float32)
    vols = {"t2": _vol(b, path="c_t2.nii.gz"), "t1": _vol(a, path="c_t1.nii.gz")}
    both = stack_sequences(vols, ["t1", "t2"])
    assert both.array.shape == (3, 3, 2, 2) and (both.array[..., 0] == 0).all() and (both.array[..., 1] == 1).all()
    with pytest.raises(FileError, match="sequence\\(s\\) flair missing"):
        stack_sequences(vols, ["t1", "t2", "flair"])
    shifted = {**vols, "t2": _vol(b, origin=(0.0, 0.0, 4.0), path="c_t2.nii.gz")}
    with pytest.raises(FileError, match="not on the grid of c_t1.nii.gz") as err:
        stack_sequences(shifted, ["t1", "t2"])
    assert err.value.path == "c_t2.nii.gz"
