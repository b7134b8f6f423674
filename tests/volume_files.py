"""Writing small NIfTI volume datasets for the volume tests: LIDC-style CT crops in Hounsfield units
(air around a soft-tissue nodule) with their masks and labels.csv."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save(path: Path, data: np.ndarray, spacing=(0.7, 0.8, 1.25)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def ct_case(seed: int, shape=(10, 12, 6), malignant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A CT crop in HU (air -1000 + noise around a 40 HU nodule; a malignant one is larger) and its mask."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32) + rng.normal(0, 20, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    r = 3 if malignant else 2
    cx, cy, cz = shape[0] // 2, shape[1] // 2, shape[2] // 2
    mask[cx - r:cx + r, cy - r:cy + r, max(cz - r // 2 - 1, 0):cz + r // 2 + 1] = 1
    hu[mask > 0] = 40.0
    return hu.astype(np.int16).astype(np.float32), mask


def lidc_like(root: Path, n: int = 8, shape=(10, 12, 6)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LIDC-style names <patient>_R_<nodule> (two nodules per patient), masks and labels.csv."""
    cases = {}
    rows = ["image,label"]
    for i in range(n):
        name = f"P{i // 2}_R_{i % 2 + 1}"
        malignant = i % 3 == 0
        hu, mask = ct_case(i, shape, malignant)
        save(root / "images" / f"{name}.nii.gz", hu.astype(np.int16))
        save(root / "masks" / f"{name}.nii.gz", mask)
        rows.append(f"{name}.nii.gz,{'malignant' if malignant else 'benign'}")
        cases[name] = (hu, mask)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return cases
