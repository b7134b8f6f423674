"""The BUSI layout: ``Dataset_BUSI_with_GT/<class>/<class> (N).png`` with ``<class> (N)_mask.png``
and extra lesions as ``_mask_1.png``, ``_mask_2.png`` (the image's mask is their union)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BadFile, DataError
from .records import IMAGE_SUFFIXES, Item, inside

_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$")


def busi_root(path: str | Path) -> Path:
    """The folder holding the class folders (``path`` itself or its ``Dataset_BUSI_with_GT``)."""
    root = Path(path)
    if (root / "Dataset_BUSI_with_GT").is_dir():
        root = root / "Dataset_BUSI_with_GT"
    if not root.is_dir():
        raise DataError(f"{path}: not a folder (expected the BUSI layout Dataset_BUSI_with_GT/<class>/)")
    return root


def scan_busi(path: str | Path, classes: list[str]) -> tuple[list[Item], list[BadFile]]:
    """Walk a BUSI folder: the cases found, and the files that cannot be ingested (with the reason)."""
    root = busi_root(path)
    items: list[Item] = []
    bad: list[BadFile] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no class folders (expected Dataset_BUSI_with_GT/<class>/<class> (N).png)")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if folder.name not in classes:
            problem = f"unknown class {folder.name!r} (expected one of {', '.join(classes)})"
            bad += [BadFile(str(f), problem) for f in files]
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        rejected: set[str] = set()  # cases already reported: their masks are not reported again
        for f in files:
            m = _MASK.match(f.stem)
            if not inside(root, f):
                bad.append(BadFile(str(f), f"path escapes the dataset root {root} (symlink or '..')"))
                rejected.add(m.group("stem") if m else f.stem)
                continue
            if m:
                masks.setdefault(m.group("stem"), []).append(f)
            else:
                images[f.stem] = f
        for stem, mpaths in sorted(masks.items()):
            if stem not in images and stem not in rejected:
                bad += [BadFile(str(p), f"mask without an image (no {stem}.png in {folder})") for p in mpaths]
        for stem, ipath in sorted(images.items()):
            if stem in rejected:  # one of its masks escapes the root: the whole case stays out
                continue
            items.append(Item(image=ipath, masks=sorted(masks.get(stem, [])), class_name=folder.name))
    return items, bad
