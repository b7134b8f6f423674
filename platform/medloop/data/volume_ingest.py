"""Volume ingest: a generic-layout folder of NIfTI files or DICOM series into the ledger and the store.

``medloop ingest generic`` comes here when ``images/`` holds volumes (:func:`medloop.data.generic.is_volume_folder`): a
``.nii`` / ``.nii.gz`` file or a sub-folder (a DICOM series). Every case is read by
:func:`medloop.data.volume_dataset.read_volume_folder` (canonical RAS+, sequences stacked, mask checked
against its image, optional resampling to ``data.spacing``), its intensities normalised
(:func:`normalise_intensity`) and laid out for the models as ``(C, D, H, W)`` = (sequences, axial
slices, rows, columns) (:func:`model_axes`). The store keeps that array and the mask's label map
(``.npy``); the ledger gets one sample per case with ``depth`` and ``spacing``.

The same rules as 2D ingest: a bad file is named with its reason and, without ``skip_bad``, nothing
is written; cases are deduplicated by the hash of their voxels and mask, so ingesting twice changes
nothing; the split is stratified by class, and with ``data.group_pattern`` every patient's cases
stay in one split (a new case of a patient already in the ledger joins that patient's split).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from sqlalchemy import select

from ..config import Campaign
from ..ledger import Ledger, Sample
from .errors import BadFile, DataError, IngestError
from .imagestore import ImageStore, content_hash
from .records import region_label_problem
from .volumes import ct_window, zscore_within_body

if TYPE_CHECKING:
    from .ingest import IngestReport

#: a voxel below this (HU of air is -1000) marks a CT volume for ``data.intensity = "auto"``
HU_AIR_BELOW = -500.0


# ---- pure ------------------------------------------------------------------------------------------


def intensity_kind(array: np.ndarray, setting: str) -> str:
    """``ct``, ``mri`` or ``none``: the campaign's ``data.intensity``, with ``auto`` decided by the values
    (Hounsfield units reach below :data:`HU_AIR_BELOW`; MRI intensities are not negative)."""
    if setting != "auto":
        return setting
    return "ct" if float(np.min(array)) < HU_AIR_BELOW else "mri"


def normalise_intensity(array: np.ndarray, kind: str, window: tuple[float, float] = (-600.0, 1500.0)) -> np.ndarray:
    """A canonical volume (X, Y, Z) or (X, Y, Z, S) normalised: ``ct`` the window (level, width) to [0, 1]
    (:func:`medloop.data.volumes.ct_window`), ``mri`` z-score within the body per sequence
    (:func:`medloop.data.volumes.zscore_within_body`), ``none`` unchanged (float32)."""
    if kind == "ct":
        return ct_window(array, window[0], window[1])
    if kind == "mri":
        return zscore_within_body(array)
    if kind == "none":
        return np.asarray(array, dtype=np.float32)
    raise ValueError(f"unknown intensity normalisation {kind!r} (expected ct, mri or none)")


def model_axes(array: np.ndarray) -> np.ndarray:
    """Canonical RAS+ (X, Y, Z) or (X, Y, Z, S) -> (S, Z, Y, X): sequences first, then axial slices
    (inferior to superior), rows (posterior to anterior), columns (right to left of the array's x)."""
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"expected (X, Y, Z) or (X, Y, Z, S), got shape {a.shape}")
    return np.ascontiguousarray(a.transpose(3, 2, 1, 0))


def prepare_volume(array: np.ndarray, intensity: str, window: tuple[float, float]) -> tuple[np.ndarray, str]:
    """A canonical (X, Y, Z) or (X, Y, Z, S) volume as the model takes it: intensities normalised
    (:func:`intensity_kind` of the campaign's ``data.intensity`` setting, :func:`normalise_intensity`) and laid
    out (C, D, H, W) (:func:`model_axes`); returns (array, the normalisation used). What ingest stores and what
    ``medloop predict`` / ``evaluate`` give the model."""
    kind = intensity_kind(array, intensity)
    return model_axes(normalise_intensity(array, kind, window)), kind


def volume_case_hash(image: np.ndarray, mask: np.ndarray | None) -> str:
    """A case's identity: the hash of its stored (C, D, H, W) voxels and its (D, H, W) label map."""
    mask_hash = "-" if mask is None else content_hash(mask)
    return hashlib.sha256(f"{content_hash(image)}:{mask_hash}".encode()).hexdigest()


def patient_of(name: str, pattern: str | None) -> str | None:
    """The patient a case file name belongs to: ``pattern``'s first group (None: no pattern or no match)."""
    if pattern is None:
        return None
    m = re.search(pattern, name)
    return None if m is None else m.group(1)


# ---- reading ----------------------------------------------------------------------------------------


@dataclass
class PreparedVolume:
    """A case ready for the store: (C, D, H, W) float32 image, (D, H, W) uint8 label map, spacing (D, H, W) mm."""

    uid: str
    case_hash: str
    image: np.ndarray
    mask: np.ndarray | None
    class_name: str | None
    original_path: str
    spacing: tuple[float, float, float]
    intensity: str
    patient: str | None


def read_volumes(
    campaign: Campaign, path: str | Path, source: str = "generic"
) -> tuple[list[PreparedVolume], list[BadFile]]:
    """Read and normalise every case of a volume folder; nothing is written. Bad files come with their reason."""
    from .volume_dataset import read_volume_folder

    d = campaign.data
    cases, bad = read_volume_folder(path, d.classes, sequences=d.sequences, spacing=d.spacing)
    window = (float(d.ct_window[0]), float(d.ct_window[1]))
    prepared: list[PreparedVolume] = []
    for case in cases:
        kind = intensity_kind(case.image.array, d.intensity)
        try:
            image, _ = prepare_volume(case.image.array, kind, window)
        except ValueError as err:  # e.g. an MRI sequence with no body (zero spread)
            bad.append(BadFile(case.image.path, f"intensity normalisation ({kind}) failed: {err}"))
            continue
        mask = None if case.mask is None else model_axes(case.mask.array)[0]
        problem = None if mask is None or d.regions is None else region_label_problem(mask, len(d.regions), 255)
        if problem is not None and case.mask is not None:
            bad.append(BadFile(case.mask.path, f"{problem} ({', '.join(d.regions or [])})"))
            continue
        case_hash = volume_case_hash(image, mask)
        sx, sy, sz = case.image.spacing
        prepared.append(PreparedVolume(
            uid=f"{source}-{case_hash[:16]}", case_hash=case_hash, image=image, mask=mask, class_name=case.label,
            original_path=str(Path(case.image.path).resolve()), spacing=(float(sz), float(sy), float(sx)),
            intensity=kind, patient=patient_of(case.case, d.group_pattern),
        ))
    return prepared, bad


# ---- writing -----------------------------------------------------------------------------------------


def _refuse_mixing(ledger: Ledger) -> None:
    with ledger.reading() as s:
        images = s.scalar(select(Sample.id).where(Sample.depth.is_(None)).limit(1))
    if images is not None:
        raise DataError("the campaign already holds 2D images; volumes need a campaign of their own "
                        "(another campaign name or root)")


def _splits(campaign: Campaign, ledger: Ledger, cases: list[PreparedVolume]) -> list[str]:
    """Stratified by class; a patient's cases in one split, a patient already in the ledger keeps its split."""
    from .splits import assign_splits

    d = campaign.data
    known: dict[str, Counter[str]] = {}
    if d.group_pattern is not None:
        with ledger.reading() as s:
            for original, split in s.execute(select(Sample.original_path, Sample.split)).all():
                patient = patient_of(_case_name(original or ""), d.group_pattern)
                if patient is not None:
                    known.setdefault(patient, Counter())[split] += 1
    out = [""] * len(cases)
    free = [i for i, c in enumerate(cases) if c.patient is None or c.patient not in known]
    ids: dict[str, int] = {}
    groups = [ids.setdefault(cases[i].patient or f"\0{i}", len(ids)) for i in free]
    strata = [cases[i].class_name if cases[i].class_name is not None else
              ("(mask only)" if cases[i].mask is not None else None) for i in free]
    for i, split in zip(free, assign_splits(strata, d.split, d.unlabeled_fraction, d.seed, groups)):
        out[i] = split
    for i, c in enumerate(cases):
        if not out[i]:
            split = min(known[cast(str, c.patient)].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            out[i] = "pool" if split == "train" and c.class_name is None and c.mask is None else split
    return out


def _case_name(original_path: str) -> str:
    """The case name of a stored volume's file (``.../LIDC-IDRI-0001_R_1.nii.gz`` -> ``LIDC-IDRI-0001_R_1``)."""
    from .volume_dataset import nifti_stem

    return nifti_stem(Path(original_path).name)


def ingest_volumes(campaign: Campaign, path: str | Path, *, source: str = "generic", skip_bad: bool = False,
                   report: IngestReport | None = None) -> IngestReport:
    """Register a volume folder in the campaign's ledger and store; returns the :class:`IngestReport`."""
    from .ingest import IngestReport

    report = report or IngestReport(source=source, path=str(path), volumes=True)
    prepared, bad = read_volumes(campaign, path, source)
    report.found = len(prepared) + len(bad)
    report.bad = bad
    if bad and not skip_bad:
        raise IngestError(bad, f"{source} {path}")
    kinds = Counter(p.intensity for p in prepared)
    if kinds:
        w = campaign.data.ct_window
        said = {"ct": f"CT window L {w[0]:g} W {w[1]:g} -> [0, 1]", "mri": "MRI z-score within the body",
                "none": "as stored"}
        report.warnings.append("volumes: " + "; ".join(f"{n} {said[k]}" for k, n in sorted(kinds.items())))
    ledger = Ledger.open(campaign.ledger)
    try:
        _refuse_mixing(ledger)
        _write(campaign, ledger, prepared, report)
    finally:
        ledger.close()
    return report


def _write(campaign: Campaign, ledger: Ledger, prepared: list[PreparedVolume], report: IngestReport) -> None:
    from .ingest import insert_cases

    with ledger.reading() as s:
        known = set(s.scalars(select(Sample.content_hash)))
    new: dict[str, PreparedVolume] = {}
    for p in prepared:
        if p.case_hash in known or p.case_hash in new:
            report.duplicates += 1
            continue
        new[p.case_hash] = p
    cases = sorted(new.values(), key=lambda p: p.case_hash)  # file order never changes the split
    splits = _splits(campaign, ledger, cases)
    store = ImageStore(campaign.store)
    paths = [(store.put_volume(p.uid, p.image), None if p.mask is None else store.put_volume_mask(p.uid, p.mask))
             for p in cases]
    author = f"dataset:{report.source}"
    with ledger.transaction() as s:
        rows = [
            {"uid": p.uid, "content_hash": p.case_hash, "image_path": img, "original_path": p.original_path,
             "source": report.source, "split": split, "depth": p.image.shape[1], "height": p.image.shape[2],
             "width": p.image.shape[3], "channels": p.image.shape[0], "spacing": list(p.spacing)}
            for p, split, (img, _) in zip(cases, splits, paths)
        ]
        insert_cases(s, rows, [(p.class_name, mask_rel) for p, (_, mask_rel) in zip(cases, paths)], author)
    report.added = len(cases)
    report.splits = dict(Counter(splits))
    report.classes = dict(Counter(p.class_name or "(unlabeled)" for p in cases))
    groups = Counter(p.patient for p in cases if p.patient is not None)
    report.patient_groups = sum(1 for n in groups.values() if n > 1)
    report.patient_cases = sum(n for n in groups.values() if n > 1)
