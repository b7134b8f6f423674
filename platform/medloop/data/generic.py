"""The generic layout: ``images/``, optional ``masks/`` (same file stem), optional ``labels.csv``
with columns ``image,label`` (a blank label, or an image not listed, means unlabeled)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import BadFile, DataError
from .records import IMAGE_SUFFIXES, NIFTI_SUFFIXES, Item, inside


def is_volume_folder(root: str | Path) -> bool:
    """True when ``root/images`` holds a volume: a NIfTI file or a sub-folder (a DICOM series). One directory
    read that stops at the first volume (a 2D folder of 10^5 images costs no stat per file)."""
    images = os.path.join(root, "images")
    if not os.path.isdir(images):
        return False
    with os.scandir(images) as entries:
        for e in entries:
            if not e.name.startswith(".") and (e.name.lower().endswith(NIFTI_SUFFIXES) or e.is_dir()):
                return True
    return False


def _files(root: Path, folder: Path) -> list[tuple[str, str, str | None]]:
    """The image files of ``folder`` as (name, stem, real path), sorted by name; the real path is None when
    the file escapes ``root``. One directory read, plain strings (a dataset folder may hold 10^5 files): an
    entry that is not a symlink resolves to the folder's real path + its name, so only the folder and
    symlinks are resolved."""
    real_root, real_folder = root.resolve(), folder.resolve()
    inside_folder = os.path.join(str(real_folder), "") if real_folder.is_relative_to(real_root) else None
    found: list[tuple[str, str, str | None]] = []
    with os.scandir(folder) as entries:
        for e in entries:
            stem, suffix = os.path.splitext(e.name)
            if suffix.lower() not in IMAGE_SUFFIXES or not e.is_file():
                continue
            if e.is_symlink():
                real = Path(e.path).resolve()
                found.append((e.name, stem, str(real) if real.is_relative_to(real_root) else None))
            else:
                found.append((e.name, stem, None if inside_folder is None else inside_folder + e.name))
    found.sort(key=lambda t: t[0])
    return found


def _read_labels(root: Path, classes: list[str], images: dict[str, Path], bad: list[BadFile]) -> dict[str, str | None]:
    """labels.csv -> {image stem: class or None}; bad rows go to ``bad``.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one). Rows that give one
    image different labels are one bad entry naming every row; that image is left out."""
    csv_path = root / "labels.csv"
    out: dict[str, str | None] = {}
    if not csv_path.exists():
        return out
    try:
        rows_of = _label_rows(root, csv_path, classes, images, bad)
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path}: not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    for stem, rows in rows_of.items():
        if len({label for _, _, label in rows}) == 1:
            out[stem] = rows[0][2] or None
            continue
        lines = ",".join(str(line) for line, _, _ in rows)
        names = ", ".join(sorted({name for _, name, _ in rows}))
        said = ", ".join(f"line {line} {label!r}" if label else f"line {line} blank (unlabeled)"
                         for line, _, label in rows)
        bad.append(BadFile(f"{csv_path}:{lines} ({names})",
                           f"conflicting labels for the same image ({said}); the image is left out"))
        images.pop(stem, None)
    return out


def _label_rows(
    root: Path, csv_path: Path, classes: list[str], images: dict[str, Path], bad: list[BadFile]
) -> dict[str, list[tuple[int, str, str]]]:
    """The valid rows of labels.csv by image stem: [(line, name as written, label or "")]. A row naming a
    file the walk found (the common case) is taken without parsing its name as a path."""
    rows_of: dict[str, list[tuple[int, str, str]]] = {}
    stem_of = {p.name: stem for stem, p in images.items()}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        column = {} if header is None else {f.strip(): i for i, f in enumerate(header)}  # a repeated name: the last
        if "image" not in column or "label" not in column:
            raise DataError(f"{csv_path}: expected a header with columns image,label (got {header})")
        at_image, at_label = column["image"], column["label"]
        rows = (row for row in reader if row)  # blank lines are skipped (and not counted), as csv.DictReader does
        for line, row in enumerate(rows, start=2):
            name = row[at_image].strip() if at_image < len(row) else ""
            label = row[at_label].strip() if at_label < len(row) else ""
            where = f"{csv_path}:{line}"
            stem = stem_of.get(name) or Path(name).stem  # a found file's stem is the one Path gives its name
            found = images.get(stem)
            if found is None or name != found.name:  # not simply the file the walk found (and checked)
                target = (root / "images" / name) if (root / "images" / name).exists() else (root / name)
                if not name or ".." in Path(name).parts or Path(name).is_absolute() or not inside(root, target):
                    bad.append(BadFile(f"{where} ({name})",
                                       f"path escapes the dataset root {root} (symlink or '..')"))
                    continue
            if stem not in images:
                bad.append(BadFile(f"{where} ({name})", "listed in labels.csv but no such file in images/"))
                continue
            if label and label not in classes:
                bad.append(BadFile(f"{where} ({name})",
                                   f"unknown class {label!r} (expected one of {', '.join(classes)})"))
                images.pop(stem)
                continue
            rows_of.setdefault(stem, []).append((line, name, label))
    return rows_of


def scan_generic(path: str | Path, classes: list[str]) -> tuple[list[Item], list[BadFile]]:
    """Walk a generic dataset folder: the cases found, and the files that cannot be ingested."""
    root = Path(path)
    if not (root / "images").is_dir():
        raise DataError(f"{root}: expected a folder images/ (and optionally masks/ and labels.csv)")
    bad: list[BadFile] = []
    images: dict[str, Path] = {}
    real: dict[str, str] = {}  # stem -> the image's real path
    folder = root / "images"
    for name, stem, f_real in _files(root, folder):
        if f_real is None:
            bad.append(BadFile(str(folder / name), f"path escapes the dataset root {root} (symlink or '..')"))
        elif stem in images:
            bad.append(BadFile(str(folder / name), f"two images with the stem {stem!r} ({images[stem].name})"))
        else:
            images[stem] = folder / name
            real[stem] = f_real
    masks: dict[str, Path] = {}
    folder = root / "masks"
    if folder.is_dir():
        for name, stem, f_real in _files(root, folder):
            if f_real is None:
                bad.append(BadFile(str(folder / name), f"path escapes the dataset root {root} (symlink or '..')"))
            elif stem not in images:
                bad.append(BadFile(str(folder / name), f"mask without an image (no images/{stem}.*)"))
            else:
                masks[stem] = folder / name
    labels = _read_labels(root, classes, images, bad)
    items = [
        Item(image=p, masks=[masks[s]] if s in masks else [], class_name=labels.get(s), resolved=real[s])
        for s, p in sorted(images.items())
    ]
    return items, bad
