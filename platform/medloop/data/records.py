"""What a loader yields (:class:`Record`), and the file reading every loader shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import FileError
from .imagestore import binarise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Record:
    """One case from a dataset: the image as read, its mask (or None) and class (or None)."""

    original_path: str | None  # the file on disk (kept by reference), or a synthetic id
    image: np.ndarray  # uint8, (H, W) or (H, W, 3), original size
    mask: np.ndarray | None  # uint8 {0, 1}, (H, W), same size as the image
    class_name: str | None


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (symlinks and ``..`` resolved) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def check_inside(root: Path, path: Path) -> None:
    if not inside(root, path):
        raise FileError(str(path), f"path escapes the dataset root {root} (symlink or '..')")


def read_image(path: Path, channels: int = 1) -> np.ndarray:
    """Decode an image fully (a truncated file fails here) as uint8 grey (channels=1) or RGB (3)."""
    try:
        with Image.open(path) as im:
            im.load()
            out = im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FileError(str(path), f"unreadable or truncated image ({err})") from None
    return np.asarray(out, dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask in any PNG mode (1-bit, L, RGB, RGBA) and binarise it (> 0) to uint8 {0, 1}."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FileError(str(path), f"unreadable or truncated mask ({err})") from None
    if arr.ndim == 3:
        colour = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
        if arr.shape[-1] in (2, 4):  # alpha: transparent pixels are background
            colour = np.where(arr[..., -1] > 0, colour, 0)
        arr = colour
    return binarise(arr)


def check_mask_size(mask_path: Path, mask: np.ndarray, image: np.ndarray) -> None:
    if mask.shape[:2] != image.shape[:2]:
        raise FileError(
            str(mask_path),
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"({image.shape[1]}x{image.shape[0]})"
        )


@dataclass
class Item:
    """A case found by a directory walk, not yet read: its image file, mask files and class."""

    image: Path
    masks: list[Path]
    class_name: str | None

    def load(self, channels: int = 1) -> Record:
        """Read the image and the union of its masks; raises :class:`FileError` naming the bad file."""
        image = read_image(self.image, channels)
        mask = None
        for mpath in self.masks:
            m = read_mask(mpath)
            check_mask_size(mpath, m, image)
            mask = m if mask is None else np.maximum(mask, m)
        return Record(original_path=str(self.image.resolve()), image=image, mask=mask, class_name=self.class_name)
