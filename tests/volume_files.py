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


def queue_scored_volume(campaign, model_lesion: tuple[slice, slice, slice]):  # noqa: ANN001, ANN201
    """The first pool volume of an ingested volume campaign, scored as the score step would store it on the
    model grid ``data.volume_size`` (a lesion of probability 0.9 at ``model_lesion``, uncertain there: 0.3 vs
    0.01; predicted malignant, 70 % confident) and queued for annotation. Returns (ledger, store, sample)."""
    from sqlalchemy import select

    from medloop.data.imagestore import ImageStore, prob_map_path
    from medloop.ledger import AnnotationTask, Ledger, Prediction, Sample

    ledger, store = Ledger.open(campaign.ledger), ImageStore(campaign.store)
    with ledger.reading() as s:
        smp = s.scalars(select(Sample).where(Sample.split == "pool").order_by(Sample.id)).first()
    assert smp is not None
    prob = np.zeros(tuple(campaign.data.volume_size), np.float32)
    prob[model_lesion] = 0.9
    umap = np.where(prob > 0, 0.3, 0.01).astype(np.float32)
    umap_rel = store.put_array(f"umap/round-1/{smp.uid}", umap)
    store.put_array(prob_map_path(f"umap/round-1/{smp.uid}"), prob.astype(np.float16))
    with ledger.transaction() as s:
        s.add(Prediction(round_id=1, sample_id=smp.id, model_version="round-1", probs=[0.3, 0.7], pred_class=1,
                         confidence=0.7, std=0.1, entropy=0.6, mutual_info=0.02, seg_uncertainty=0.3,
                         mask_path=store.put_mask(f"pred/round-1/{smp.uid}", (prob >= 0.5).astype(np.uint8)),
                         umap_path=umap_rel))
        s.add(AnnotationTask(sample_id=smp.id, round_id=1, state="intent", is_audit=False, score=1.0))
    return ledger, store, smp
