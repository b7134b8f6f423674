"""Images given to ``medloop predict``: files or folders of PNG / JPEG / BMP / TIFF, and single-frame DICOM.

Reading follows ingest's rules (:func:`medloop.data.records.decode_image`): the file is decoded fully (a
truncated file fails), images deeper than 8 bits are rescaled to 0..255 (min-max per image, or
``data.intensity_window``), and the picture is converted to the model's channels. A conversion that
changes the channel count is kept with a note naming the file. DICOM goes through pydicom: the
modality LUT (rescale slope / intercept), MONOCHROME1 inverted, then the same intensity rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadFile, FileError
from .records import IMAGE_SUFFIXES, decode_image, is_deep, rescale_intensity

DICOM_SUFFIXES = (".dcm", ".dicom")
INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES
_GREY_MODES = ("1", "L", "I", "F")


@dataclass
class InputFile:
    """An input file and the name its outputs get (``masks/<name>.png``): the file's stem, or its path
    inside the folder given, without the suffix."""

    path: Path
    name: str


@dataclass
class InputImage:
    """A decoded input: uint8 (H, W) for 1 channel, (H, W, 3) for 3, at the file's own size."""

    file: InputFile
    image: np.ndarray
    notes: list[str] = field(default_factory=list)


def _unique(name: str, path: Path, taken: set[str]) -> str:
    if name not in taken:
        return name
    base = f"{name}-{path.suffix.lstrip('.').lower()}"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    return out


def list_inputs(paths: Sequence[str | Path]) -> tuple[list[InputFile], list[BadFile]]:
    """The image files under ``paths`` (files, or folders walked recursively, in sorted order; hidden files
    and files with other suffixes in a folder are left out), and the paths that cannot be used."""
    files: list[InputFile] = []
    bad: list[BadFile] = []
    taken: set[str] = set()
    seen: set[Path] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        name = _unique(name, path, taken)
        taken.add(name)
        files.append(InputFile(path, name))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                    continue
                if f.suffix.lower() in INPUT_SUFFIXES:
                    add(f, rel.with_suffix("").as_posix())
        elif p.is_file():
            if p.suffix.lower() in INPUT_SUFFIXES:
                add(p, p.stem)
            else:
                bad.append(BadFile(str(p), f"not an image file (expected one of {', '.join(INPUT_SUFFIXES)})"))
        else:
            bad.append(BadFile(str(p), "no such file or folder"))
    return files, bad


def _channel_note(path: Path, mode: str, channels: int) -> list[str]:
    grey = mode in _GREY_MODES or mode.startswith("I;")
    if channels == 1 and not grey:
        return [f"{path}: {mode} image converted to grey (the model takes 1 channel)"]
    if channels == 3 and grey:
        return [f"{path}: grey ({mode}) image repeated to 3 channels (the model takes RGB)"]
    if channels == 3 and mode != "RGB":
        return [f"{path}: {mode} image converted to RGB"]
    return []


def read_dicom(path: Path, channels: int = 1, window: tuple[float, float] | None = None) -> tuple[np.ndarray, str,
                                                                                                 list[str]]:
    """A single-frame DICOM -> (uint8 image with ``channels``, a PIL-like mode of the pixels, notes)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise FileError(str(path), f"multi-frame DICOM ({frames} frames); give single frames")
        pixels = np.asarray(ds.pixel_array)
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
        if pixels.ndim == 2:
            from pydicom.pixels import apply_modality_lut

            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
            if photometric == "MONOCHROME1":  # low values are white
                values = values.max() + values.min() - values
    except FileError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, OSError, EOFError,
            NotImplementedError, RuntimeError) as err:
        raise FileError(str(path), f"unreadable DICOM ({type(err).__name__}: {err})") from None
    notes: list[str] = []
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        rgb = pixels[..., :3]
        if rgb.dtype != np.uint8:
            grey8, notes = rescale_intensity(rgb, window, str(path))
            rgb = grey8
        im = Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), "RGB")
        mode = "RGB"
    elif pixels.ndim == 2:
        if pixels.dtype == np.uint8 and np.array_equal(values, pixels) and photometric != "MONOCHROME1":
            grey = pixels
            mode = "L"
        else:
            grey, notes = rescale_intensity(values, window, str(path))
            mode = "I;16" if pixels.dtype.itemsize > 1 else "L"
        im = Image.fromarray(np.ascontiguousarray(grey), "L")
    else:
        raise FileError(str(path), f"DICOM pixel data of shape {pixels.shape}: expected one 2D frame")
    out = im.convert("L" if channels == 1 else "RGB")
    return np.asarray(out, dtype=np.uint8), mode, notes


def read_input(file: InputFile, channels: int = 1, window: tuple[float, float] | None = None) -> InputImage:
    """Decode one input with ingest's rules; raises :class:`FileError` naming the file and the problem."""
    path = file.path
    if path.suffix.lower() in DICOM_SUFFIXES:
        image, mode, notes = read_dicom(path, channels, window)
    else:
        image, mode, notes = decode_image(path, channels, window)
    if image.size == 0:
        raise FileError(str(path), "image has no pixels")
    if is_deep(mode):
        rule = ("min-max per image" if window is None
                else f"data.intensity_window [{window[0]:g}, {window[1]:g}]")
        notes = [f"{path}: {mode} pixels rescaled to 8 bits ({rule} -> 0..255)", *notes]
    return InputImage(file, image, [*notes, *_channel_note(path, mode, channels)])
