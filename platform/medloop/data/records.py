"""What a loader yields (:class:`Record`), and the file reading every loader shares."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import FileError
from .imagestore import binarise, read_fd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")  # volume files (medloop.data.volumes reads them)


class SamePNG(NamedTuple):
    """A PNG file whose pixels are exactly an array ingest stores (an 8-bit grey or RGB image, a 0/255
    mask): the store may copy its bytes instead of encoding the array again. ``data``: the bytes that
    were decoded, when held (ingest's reader processes send them instead of the decoded arrays, and the
    store writes exactly what was checked); without them the file is read again, and used only while it
    still has this size and modification time."""

    path: str  # a string: ingest's reader processes send one per file back (a Path costs more to unpickle)
    size: int
    mtime_ns: int
    data: bytes | None = None

    def read(self) -> bytes | None:
        """The file's bytes, or None when it changed since it was read (then encode the array)."""
        if self.data is not None:
            return self.data
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
                    return None
                data = fh.read()
        except OSError:
            return None
        return data if len(data) == self.size else None

    def holding(self, source: IO[bytes] | Path) -> SamePNG:
        """This file with the bytes it was decoded from (``source`` of :func:`read_source`), when read whole."""
        return self._replace(data=source.getvalue()) if isinstance(source, io.BytesIO) else self


#: files up to this size are read into memory in one call and decoded from there (PIL reading a file issues
#: one small read per PNG chunk: about 10 system calls for a small image, most of an ingest's reading time);
#: larger ones are decoded from the file, so a huge file is not held whole before the decompression-bomb check
READ_WHOLE_BELOW = 32 << 20


def read_source(path: Path) -> tuple[IO[bytes] | Path, SamePNG | None]:
    """What to decode ``path`` from (its bytes, read in one call, or the path itself) and the file's size and
    time at that read (None when it cannot be read: decoding the path then reports why). ``os`` calls (open,
    fstat, read, close), not a buffered file object, which adds about as many again per file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return path, None
    try:
        st = os.fstat(fd)
        stat = SamePNG(os.fspath(path), st.st_size, st.st_mtime_ns)
        if st.st_size > READ_WHOLE_BELOW:
            return path, stat
        data = read_fd(fd, st.st_size)
    except OSError:
        return path, None
    finally:
        os.close(fd)
    return io.BytesIO(data), stat


@dataclass
class Record:
    """One case from a dataset: the image as read, its mask (or None) and class (or None)."""

    original_path: str | None  # the file on disk (kept by reference), or a synthetic id
    image: np.ndarray  # uint8, (H, W) or (H, W, 3), original size
    mask: np.ndarray | None  # uint8 {0, 1}, (H, W), same size as the image
    class_name: str | None
    mode: str = "L"  # the file's PIL mode: "I;16", "I" or "F" were rescaled to 8 bits (see decode_image)
    notes: list[str] = field(default_factory=list)  # warnings about this case, each naming the file
    image_png: SamePNG | None = None  # the image file, when its bytes are the stored image exactly
    mask_png: SamePNG | None = None  # the one mask file, when it is a 0/255 grey PNG of ``mask``


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (symlinks and ``..`` resolved) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def check_inside(root: Path, path: Path) -> None:
    if not inside(root, path):
        raise FileError(str(path), f"path escapes the dataset root {root} (symlink or '..')")


def is_deep(mode: str) -> bool:
    """True for PIL modes with more than 8 bits per pixel: 16-bit ("I;16*"), 32-bit int ("I"), float ("F")."""
    return mode in ("I", "F") or mode.startswith("I;")


def rescale_intensity(
    values: np.ndarray, window: tuple[float, float] | None = None, name: str = "image"
) -> tuple[np.ndarray, list[str]]:
    """Deep pixel values (16-bit, 32-bit signed, float) -> uint8, and the warnings it needs.

    ``window`` None: min-max per image, ``(v - min) / (max - min) * 255`` rounded (a constant image
    becomes all 0, with a warning). ``window = (lo, hi)`` (``data.intensity_window``): the same map
    with ``lo``/``hi`` fixed for every image; pixels outside are set to 0 / 255 and counted in a
    warning. NaN or infinite pixels raise :class:`FileError` (there is no right value for them).
    """
    v = np.asarray(values, dtype=np.float64)
    notes: list[str] = []
    finite = np.isfinite(v)
    if not finite.all():
        raise FileError(name, f"{int((~finite).sum())} pixel(s) are NaN or infinite")
    if window is None:
        lo, hi = float(v.min()), float(v.max())
        if hi == lo:
            notes.append(f"{name}: constant image (every pixel {lo:g}): stored as 0")
            return np.zeros(v.shape, dtype=np.uint8), notes
    else:
        lo, hi = float(window[0]), float(window[1])
        outside = int(((v < lo) | (v > hi)).sum())
        if outside:
            notes.append(
                f"{name}: {outside} of {v.size} pixel(s) ({100.0 * outside / v.size:.1f} %) outside "
                f"data.intensity_window [{lo:g}, {hi:g}] (image range {v.min():g}..{v.max():g}), set to 0 / 255"
            )
    out = np.clip(np.rint((v - lo) / (hi - lo) * 255.0), 0, 255)
    return out.astype(np.uint8), notes


def decode_image(
    path: Path, channels: int = 1, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, str, list[str]]:
    """Decode an image fully (a truncated file fails here): (uint8 grey (channels=1) or RGB (3),
    the file's PIL mode, warnings naming the file).

    8-bit images are kept as they are. Deeper ones (16-bit "I;16", 32-bit signed "I", float "F")
    are rescaled to 0..255 by :func:`rescale_intensity` (min-max per image, or ``window``).
    An image over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is a bad file.
    """
    image, mode, notes, _ = _decode_image(path, channels, window)
    return image, mode, notes


def _decode_image(
    path: Path, channels: int = 1, window: tuple[float, float] | None = None, source: IO[bytes] | Path | None = None
) -> tuple[np.ndarray, str, list[str], str | None]:
    """:func:`decode_image` and the file's format (``PNG``, ``JPEG``, ...); ``source``: what to decode
    (:func:`read_source`; default the path)."""
    notes: list[str] = []
    try:
        with Image.open(path if source is None else source) as im:
            im.load()
            mode, fmt = str(im.mode), im.format
            if is_deep(mode):
                grey, notes = rescale_intensity(np.asarray(im), window, str(path))
                out = Image.fromarray(grey, "L")
                out = out if channels == 1 else out.convert("RGB")
            else:
                out = im.convert("L" if channels == 1 else "RGB")
    except FileError:
        raise
    except Image.DecompressionBombError as err:
        raise FileError(str(path), f"image too large to decode safely (decompression-bomb limit: {err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FileError(str(path), f"unreadable or truncated image ({err})") from None
    return np.asarray(out, dtype=np.uint8), mode, notes, fmt


def read_image(path: Path, channels: int = 1, window: tuple[float, float] | None = None) -> np.ndarray:
    """The image of :func:`decode_image` alone (its warnings dropped)."""
    return decode_image(path, channels, window)[0]


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask in any PNG mode (1-bit, L, RGB, RGBA) and binarise it (> 0) to uint8 {0, 1}."""
    return _read_mask(path)[0]


def read_region_mask(path: Path, regions: int, source: IO[bytes] | Path | None = None) -> tuple[np.ndarray, bool]:
    """A region label mask (``data.regions``: one grey / palette channel, labels 0..``regions``) as uint8, and
    whether the file holds exactly what the store writes for it (a grey PNG of the labels when some label is
    above 1); a :class:`FileError` naming the file for colour masks or labels above ``regions``."""
    try:
        with Image.open(path if source is None else source) as im:
            im.load()
            mode, fmt = im.mode, im.format
            arr = np.asarray(im)
    except Image.DecompressionBombError as err:
        raise FileError(str(path), f"mask too large to decode safely (decompression-bomb limit: {err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FileError(str(path), f"unreadable or truncated mask ({err})") from None
    if arr.ndim != 2:
        raise FileError(str(path), f"a region mask must be one channel of labels (data.regions), got mode {mode}")
    problem = region_label_problem(arr, regions)
    if problem:
        raise FileError(str(path), problem)
    mask = arr.astype(np.uint8)
    return mask, fmt == "PNG" and mode == "L" and int(mask.max(initial=0)) > 1


def region_label_problem(mask: np.ndarray, regions: int, ignore: int | None = None) -> str | None:
    """What is wrong with a region mask's labels (``data.regions`` names ``regions`` of them: labels
    1..``regions``; ``ignore``, e.g. a volume's 255 = not annotated, is allowed too), or None."""
    unknown = [int(v) for v in np.unique(mask) if v != 0 and v != ignore and v > regions]
    if not unknown:
        return None
    return f"mask holds label(s) {unknown[:5]}; data.regions names {regions} region(s), labels 1..{regions}"


def _read_mask(path: Path, source: IO[bytes] | Path | None = None) -> tuple[np.ndarray, bool]:
    """:func:`read_mask`, and whether the file is a grey PNG holding only 0 and 255 (the store's form)."""
    try:
        with Image.open(path if source is None else source) as im:
            im.load()
            arr = np.asarray(im)
            stored_form = im.format == "PNG" and im.mode == "L"
    except Image.DecompressionBombError as err:
        raise FileError(str(path), f"mask too large to decode safely (decompression-bomb limit: {err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FileError(str(path), f"unreadable or truncated mask ({err})") from None
    if arr.ndim == 3:
        colour = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
        if arr.shape[-1] in (2, 4):  # alpha: transparent pixels are background
            colour = np.where(arr[..., -1] > 0, colour, 0)
        arr = colour
    mask = binarise(arr)
    return mask, stored_form and bool(np.array_equal(arr, mask * np.uint8(255)))


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
    resolved: str | None = None  # ``image`` with symlinks resolved, when the walk knows it (else resolved here)

    def __reduce__(self) -> tuple[Callable[..., Item], tuple[str, list[str], str | None, str | None]]:
        """Pickled with its paths as strings: ingest sends every item to a reader process."""
        return _item, (os.fspath(self.image), [os.fspath(m) for m in self.masks], self.class_name, self.resolved)

    def load(self, channels: int = 1, window: tuple[float, float] | None = None, regions: int | None = None,
             keep_bytes: bool = False) -> Record:
        """Read the image and the union of its masks; raises :class:`FileError` naming the bad file.
        ``window``: ``data.intensity_window`` for images deeper than 8 bits (see :func:`decode_image`);
        ``regions``: the number of ``data.regions``, whose labels the masks keep (:func:`read_region_mask`);
        ``keep_bytes``: the record's ``image_png`` / ``mask_png`` hold the bytes decoded (:class:`SamePNG`)."""
        source, stat = read_source(self.image)
        if keep_bytes and stat is not None:
            stat = stat.holding(source)
        image, mode, notes, fmt = _decode_image(self.image, channels, window, source)
        mask = None
        mask_png = None
        for mpath in self.masks:
            msource, mstat = read_source(mpath)
            if keep_bytes and mstat is not None:
                mstat = mstat.holding(msource)
            m, stored_form = (_read_mask(mpath, msource) if regions is None
                              else read_region_mask(mpath, regions, msource))
            check_mask_size(mpath, m, image)
            mask = m if mask is None else np.maximum(mask, m)
            mask_png = mstat if stored_form and len(self.masks) == 1 else None
        same = fmt == "PNG" and mode == ("L" if channels == 1 else "RGB")
        return Record(original_path=str(self.resolved or self.image.resolve()), image=image, mask=mask,
                      class_name=self.class_name, mode=mode, notes=notes, image_png=stat if same else None,
                      mask_png=mask_png)


def _item(image: str, masks: list[str], class_name: str | None, resolved: str | None) -> Item:
    return Item(Path(image), [Path(m) for m in masks], class_name, resolved)
