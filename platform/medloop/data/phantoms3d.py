"""Synthetic 3D multimodal brain-tumour phantoms (four MRI sequences, nested tumour regions, a
genotype class), for tests and the volume demo.

Pure and seeded: phantom ``i`` depends only on (seed, i, its class, size, noise). What each sequence
shows follows how gliomas look on the four sequences of the BraTS data that Cheng, Liu, Kuang, Wang
(MTTU-Net, IEEE TMI 2022) segment and genotype:

* regions (mask values): 1 peritumoural oedema, 2 non-enhancing core / necrosis, 3 enhancing tumour;
  the BraTS composites are whole tumour (1-3) ⊇ tumour core (2-3) ⊇ enhancing tumour (3);
* T1: core hypointense; T1ce: an enhancing rim around a dark necrotic centre; T2: oedema and core
  hyperintense; FLAIR: oedema hyperintense;
* class ``idh_wildtype``: a large necrotic core with an enhancing rim (the aggressive pattern);
  ``idh_mutant``: a smaller core without enhancement, bright on T2 but suppressed on FLAIR (the
  T2-FLAIR mismatch sign of IDH-mutant astrocytomas).

Volumes are (sequences, D, H, W) float32 in [0, 1] inside an ellipsoidal head on a zero background,
with a smooth bias field and Gaussian noise; spacing 1 mm isotropic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

SEQUENCES = ("t1", "t1ce", "t2", "flair")
GENOTYPES = ("idh_mutant", "idh_wildtype")
OEDEMA, CORE, ENHANCING = 1, 2, 3
#: the mask's labels 1, 2, 3 by name (a campaign's ``data.regions``)
REGION_NAMES = ("oedema", "core", "enhancing")
REGIONS = {"whole_tumour": (OEDEMA, CORE, ENHANCING), "tumour_core": (CORE, ENHANCING),
           "enhancing_tumour": (ENHANCING,)}

#: mean intensity per sequence of (brain, oedema, core, enhancing) for each genotype
CONTRAST = {
    "idh_wildtype": {"t1": (0.50, 0.42, 0.28, 0.38), "t1ce": (0.50, 0.45, 0.22, 0.92),
                     "t2": (0.40, 0.78, 0.85, 0.70), "flair": (0.42, 0.85, 0.72, 0.70)},
    "idh_mutant": {"t1": (0.50, 0.44, 0.34, 0.34), "t1ce": (0.50, 0.46, 0.36, 0.36),
                   "t2": (0.40, 0.74, 0.90, 0.90), "flair": (0.42, 0.80, 0.48, 0.48)},
}


@dataclass(frozen=True)
class Phantom3D:
    """One case: image (S, D, H, W) float32 in [0, 1], mask (D, H, W) uint8 region ids, its genotype."""

    image: np.ndarray
    mask: np.ndarray
    label: str
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sequences: tuple[str, ...] = SEQUENCES

    def region(self, name: str) -> np.ndarray:
        """A BraTS composite region (``whole_tumour``, ``tumour_core``, ``enhancing_tumour``) as bool."""
        return np.isin(self.mask, REGIONS[name])


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray,
               wobble: np.ndarray | None = None) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    d = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
         + ((xx - centre[2]) / radii[2]) ** 2)
    if wobble is not None:
        d = d + wobble
    return d <= 1.0


def phantom3d(seed: int, index: int, label: str, size: int = 32, noise: float = 0.04) -> Phantom3D:
    """Phantom ``index`` of generator ``seed`` with genotype ``label``; cubic ``size``^3 voxels."""
    if label not in GENOTYPES:
        raise ValueError(f"unknown genotype {label!r}; known: {', '.join(GENOTYPES)}")
    if size < 16:
        raise ValueError(f"size {size}: at least 16 voxels per axis")
    rng = np.random.default_rng((seed, index, GENOTYPES.index(label)))
    shape = (size, size, size)
    mid = np.full(3, (size - 1) / 2.0)
    head = _ellipsoid(shape, mid, np.array([0.46, 0.42, 0.36]) * size)
    wildtype = label == "idh_wildtype"
    core_r = size * (rng.uniform(0.11, 0.15) if wildtype else rng.uniform(0.07, 0.10))
    oedema_r = core_r + size * rng.uniform(0.06, 0.10)
    centre = mid + rng.uniform(-0.12, 0.12, 3) * size
    wobble = gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 2.0) * 0.6
    oedema = _ellipsoid(shape, centre, oedema_r * rng.uniform(0.85, 1.15, 3), wobble) & head
    core = _ellipsoid(shape, centre, core_r * rng.uniform(0.85, 1.15, 3), 0.5 * wobble) & oedema
    mask = np.zeros(shape, np.uint8)
    mask[oedema] = OEDEMA
    mask[core] = CORE
    if wildtype:  # an enhancing rim: the core's outer shell, one to two voxels thick
        inner = _ellipsoid(shape, centre, core_r * 0.7 * np.ones(3), 0.5 * wobble)
        mask[core & ~inner] = ENHANCING
    bias = 1.0 + 0.08 * gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), size / 4)
    image = np.zeros((len(SEQUENCES), *shape), np.float32)
    for s, name in enumerate(SEQUENCES):
        levels = np.asarray(CONTRAST[label][name], np.float32)
        seq = np.where(head, levels[0], 0.0).astype(np.float32)
        for region in (OEDEMA, CORE, ENHANCING):
            seq[mask == region] = levels[region]
        seq = gaussian_filter(seq, 0.7) * bias + rng.normal(0.0, noise, shape).astype(np.float32) * head
        image[s] = np.clip(seq, 0.0, 1.0)
    return Phantom3D(image=image, mask=mask, label=label)


def generate3d(n: int, seed: int = 0, size: int = 32, noise: float = 0.04) -> list[Phantom3D]:
    """``n`` phantoms, genotypes alternating (half each, the first ``idh_mutant``)."""
    return [phantom3d(seed, i, GENOTYPES[i % 2], size=size, noise=noise) for i in range(n)]


def write_phantom_folder(root: str | Path, n: int, seed: int = 0, size: int = 32) -> Path:
    """Write ``n`` phantoms as a volume dataset in the generic layout (the input of ``medloop demo --dataset
    volumes``): ``images/phantom-<i>.nii.gz`` 4D (the four sequences last), ``masks/phantom-<i>.nii.gz`` region
    ids, ``labels.csv``; 1 mm RAS affine, so ingest's canonical (C, D, H, W) is the phantom's own array.
    Files already written are kept (the same seed writes the same phantoms)."""
    import nibabel as nib

    out = Path(root)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["image,label"]
    for i, p in enumerate(generate3d(n, seed=seed, size=size)):
        name = f"phantom-{i:04d}.nii.gz"
        rows.append(f"{name},{p.label}")
        if (out / "masks" / name).exists():
            continue
        affine = np.diag([*p.spacing, 1.0])
        image = np.ascontiguousarray(p.image.transpose(3, 2, 1, 0))  # (S, D, H, W) -> NIfTI (X, Y, Z, S)
        nib.save(nib.Nifti1Image(image, affine), str(out / "images" / name))
        nib.save(nib.Nifti1Image(np.ascontiguousarray(p.mask.transpose(2, 1, 0)), affine), str(out / "masks" / name))
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out
