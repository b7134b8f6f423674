"""The generic layout: ``images/``, optional ``masks/`` (same file stem), optional ``labels.csv``
with columns ``image,label`` (a blank label, or an image not listed, means unlabeled)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import BadFile, DataError
from .records import IMAGE_SUFFIXES, Item, inside


def _files(root: Path, folder: Path) -> list[tuple[Path, Path | None]]:
    """The image files of ``folder``, sorted, each with its real path when it lies inside ``root``
    (None when it escapes it). One directory read: an entry that is not a symlink resolves to the
    folder's real path + its name, so only the folder and symlinks are resolved."""
    real_root, real_folder = root.resolve(), folder.resolve()
    folder_inside = real_folder.is_relative_to(real_root)
    found: list[tuple[str, Path | None]] = []
    with os.scandir(folder) as entries:
        for e in entries:
            if os.path.splitext(e.name)[1].lower() not in IMAGE_SUFFIXES or not e.is_file():
                continue
            if e.is_symlink():
                real = Path(e.path).resolve()
                found.append((e.name, real if real.is_relative_to(real_root) else None))
            else:
                found.append((e.name, real_folder / e.name if folder_inside else None))
    found.sort(key=lambda t: t[0])
    return [(folder / name, real) for name, real in found]


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
    """The valid rows of labels.csv by image stem: [(line, name as written, label or "")]."""
    rows_of: dict[str, list[tuple[int, str, str]]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise DataError(f"{csv_path}: expected a header with columns image,label (got {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            name, label = row["image"], row["label"]
            where = f"{csv_path}:{line}"
            stem = Path(name).stem
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
    real: dict[Path, Path] = {}
    for f, f_real in _files(root, root / "images"):
        if f_real is None:
            bad.append(BadFile(str(f), f"path escapes the dataset root {root} (symlink or '..')"))
        elif f.stem in images:
            bad.append(BadFile(str(f), f"two images with the stem {f.stem!r} ({images[f.stem].name})"))
        else:
            images[f.stem] = f
            real[f] = f_real
    masks: dict[str, Path] = {}
    if (root / "masks").is_dir():
        for f, f_real in _files(root, root / "masks"):
            if f_real is None:
                bad.append(BadFile(str(f), f"path escapes the dataset root {root} (symlink or '..')"))
            elif f.stem not in images:
                bad.append(BadFile(str(f), f"mask without an image (no images/{f.stem}.*)"))
            else:
                masks[f.stem] = f
    labels = _read_labels(root, classes, images, bad)
    items = [
        Item(image=p, masks=[masks[s]] if s in masks else [], class_name=labels.get(s), resolved=real[p])
        for s, p in sorted(images.items())
    ]
    return items, bad
