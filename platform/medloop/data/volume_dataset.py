"""Reading a folder of volumes in the generic layout: what volume ingest
(:mod:`medloop.data.volume_ingest`, ``medloop ingest generic``) registers.

Layout (detected from the files themselves)::

    images/<case>.nii.gz                  3D, or 4D with the sequences on the 4th axis (MSD layout)
    images/<case>_<sequence>.nii.gz       one file per sequence when ``sequences`` is given
    images/<case>/                        a DICOM series (one slice per file)
    masks/<case>.nii.gz                   optional, the image's grid; integer region labels
    labels.csv                            optional, columns image,label (image: the case or one of its files)

Every case is read, oriented to canonical RAS+, stacked in the ``sequences`` order, checked against
its mask and optionally resampled to ``spacing`` (mask by nearest neighbour). A bad file (unreadable,
truncated, 2D, mask on another grid, a missing sequence, an unknown class) is returned as a
:class:`~medloop.data.errors.BadFile` naming the file and the reason; the other cases are kept.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medloop.data.dicom_series import read_dicom_series
from medloop.data.errors import BadFile, DataError, FileError
from medloop.data.volumes import NIFTI_SUFFIXES, Volume, is_nifti, read_mask, read_nifti, resample, stack_sequences


@dataclass(frozen=True)
class VolumeCase:
    """One case: its image (X, Y, Z) or (X, Y, Z, S), optional mask (X, Y, Z) uint8, optional class."""

    case: str
    image: Volume
    mask: Volume | None
    label: str | None


def nifti_stem(name: str) -> str:
    """``case.nii.gz`` -> ``case`` (``Path.stem`` would keep ``.nii``)."""
    for suffix in NIFTI_SUFFIXES[::-1]:  # .nii.gz before .nii
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def case_sources(images: Path, sequences: Sequence[str] | None) -> dict[str, dict[str, Path] | Path]:
    """case -> its file / DICOM folder, or -> {sequence: file} when ``sequences`` is given."""
    cases: dict[str, dict[str, Path] | Path] = {}
    for entry in sorted(images.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            cases[entry.name] = entry
            continue
        stem = nifti_stem(entry.name)
        if sequences:
            case, _, seq = stem.rpartition("_")
            if case and seq in sequences:
                files = cases.setdefault(case, {})
                if isinstance(files, dict):
                    files[seq] = entry
                continue
        cases[stem] = entry
    return cases


def read_case_image(source: dict[str, Path] | Path, sequences: Sequence[str] | None) -> Volume:
    """A case's image from :func:`case_sources`' entry: sequence files stacked, a DICOM series, or a NIfTI
    file, in canonical RAS+; a :class:`FileError` naming the file otherwise."""
    if isinstance(source, dict):
        assert sequences is not None
        return stack_sequences({seq: read_nifti(path) for seq, path in source.items()}, sequences)
    if source.is_dir():
        return read_dicom_series(source)
    if not is_nifti(source):
        raise FileError(str(source),
                        f"not a volume file (expected {', '.join(NIFTI_SUFFIXES)} or a DICOM series folder)")
    return read_nifti(source)


def _labels(root: Path, classes: Sequence[str], bad: list[BadFile]) -> dict[str, str]:
    path = root / "labels.csv"
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise DataError(f"{path}: expected a header with columns image,label (got {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            name, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
            if not label:
                continue
            if label not in classes:
                bad.append(BadFile(f"{path}:{line} ({name})", f"unknown class {label!r} (expected one of "
                                                               f"{', '.join(classes)})"))
                continue
            out[nifti_stem(name)] = label
    return out


def read_volume_folder(
    path: str | Path,
    classes: Sequence[str],
    *,
    sequences: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[list[VolumeCase], list[BadFile]]:
    """The readable cases of a volume folder and the bad files, each with its reason (module doc)."""
    root = Path(path)
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{root}: expected a folder images/ (and optionally masks/ and labels.csv)")
    bad: list[BadFile] = []
    labels = _labels(root, classes, bad)
    cases: list[VolumeCase] = []
    for case, source in case_sources(images, sequences).items():
        try:
            image = read_case_image(source, sequences)
            mask_file = next((root / "masks" / f"{case}{s}" for s in NIFTI_SUFFIXES
                              if (root / "masks" / f"{case}{s}").is_file()), None)
            mask = read_mask(mask_file, image) if mask_file is not None else None
            if spacing is not None:
                image = resample(image, spacing)
                mask = resample(mask, spacing, mask=True) if mask is not None else None
        except FileError as err:
            bad.append(err.as_bad())
            continue
        label = labels.get(case)
        if label is None and isinstance(source, dict):  # labels.csv may name one of the sequence files
            label = next((labels[nifti_stem(p.name)] for p in source.values() if nifti_stem(p.name) in labels), None)
        cases.append(VolumeCase(case=case, image=image, mask=mask, label=label))
    return cases, bad
