"""The image store: normalised PNG images and masks, volumes, and arrays (uncertainty maps), in a folder.

Paths handed out are relative to the store's folder (``<campaign>/store``), so a ledger
stays valid when the campaign folder moves. Images are uint8, (H, W) for grey or
(H, W, 3) for RGB; masks are uint8 {0, 1} (H, W); pseudo-mask ignore maps are bool.

Sizes: images, dataset (truth) masks and human masks are kept at the image's native size
(``Sample.height`` x ``Sample.width``) and never resized on storage; what scoring writes
(predicted masks, pixel-uncertainty and lesion-probability maps) and pseudo-masks are at the
model's input size (``data.image_size`` square). ``load_mask_at`` / ``mask_at`` read any mask at a
requested size (nearest), ``prob_at`` / ``prob_mask`` resize a probability map (bilinear).

Volumes (CT, MRI) are ``.npy`` files: ``volumes/<uid>.npy`` float32 ``(C, D, H, W)`` after ingest's
orientation and intensity normalisation, and ``masks/<uid>.npy`` uint8 ``(D, H, W)`` label maps on the
same grid (255 = voxel not annotated, e.g. the other slices of a partially labelled volume).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image


def binarise(mask: np.ndarray) -> np.ndarray:
    """The one mask convention: any non-zero value is lesion -> uint8 {0, 1}."""
    return (np.asarray(mask) > 0).astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, bool, tuple[int, ...]]:
    """An ``.npy`` version 1.0 header -> (dtype, Fortran order, shape); cached, since a store holds
    thousands of arrays with a handful of distinct headers and parsing one costs more than reading
    a small array."""
    fields = ast.literal_eval(header.decode("latin1"))
    return np.dtype(fields["descr"]), bool(fields["fortran_order"]), tuple(int(n) for n in fields["shape"])


def read_npy(path: Path) -> np.ndarray:
    """``np.load(path, allow_pickle=False)``, parsing each distinct header once. Other ``.npy`` versions
    and object arrays go to ``np.load``; a file shorter than its header says is a ``ValueError``
    naming the file."""
    with open(path, "rb") as f:
        head = f.read(10)
        if len(head) < 10 or head[:6] != b"\x93NUMPY" or head[6] != 1:
            return np.load(path, allow_pickle=False)
        dtype, fortran, shape = _npy_header(f.read(int.from_bytes(head[8:10], "little")))
        if dtype.hasobject:
            return np.load(path, allow_pickle=False)
        count = math.prod(shape)
        data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"{path}: truncated array file, {data.size} of {count} values of shape {shape}")
    return data.reshape(shape, order="F" if fortran else "C")


def content_hash(image: np.ndarray) -> str:
    """sha256 of the pixel data and shape: the same picture gets the same hash, whatever file held it."""
    h = hashlib.sha256()
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def nearest_resize(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` at ``shape`` (same number of axes) by nearest neighbour, values kept: output index ``j`` of an
    axis of size ``n -> m`` reads ``floor((j + 0.5) * n / m)`` (PyTorch's ``nearest-exact``)."""
    a = np.asarray(array)
    if a.shape == tuple(shape):
        return a
    if a.ndim != len(shape):
        raise ValueError(f"cannot resize an array of shape {a.shape} to {tuple(shape)}")
    index = tuple(np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1) for n, m in zip(a.shape, shape))
    return a[np.ix_(*index)]


def mask_at(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask (any integer values, e.g. {0, 1} or 255 = ignore) at ``shape`` = (height, width), or
    (slices, rows, columns) for a volume's mask, nearest-neighbour: the values are kept. Returned
    unchanged when the size already matches."""
    m = np.asarray(mask)
    if m.ndim == 3 and len(shape) == 3:
        return nearest_resize(m, (int(shape[0]), int(shape[1]), int(shape[2])))
    h, w = int(shape[0]), int(shape[1])
    if m.shape[:2] == (h, w):
        return m
    src = m.astype(np.uint8) if m.dtype == bool else m
    return np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((w, h), Image.Resampling.NEAREST))


def prob_at(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map (a lesion probability, a pixel uncertainty) at ``shape`` = (height, width),
    bilinear on float32 (PIL mode ``F``; pixel centres aligned, as ``mask_at``)."""
    p = np.asarray(prob, dtype=np.float32)
    h, w = int(shape[0]), int(shape[1])
    if p.shape == (h, w):
        return p
    return np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((w, h), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def prob_mask(prob: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """The lesion mask at ``shape`` from a lesion-probability map of any size: the probabilities are
    resized bilinearly first, then thresholded (``>= threshold``), so the mask follows the lesion
    boundary at the target resolution instead of the blocks of an upscaled low-resolution mask."""
    return (prob_at(prob, shape) >= threshold).astype(np.uint8)


def prob_map_path(umap_path: str) -> str:
    """Where the lesion-probability map of a scored image lives, derived from its pixel-uncertainty
    map (``umap/<version>/<uid>`` -> ``prob/<version>/<uid>``, with or without the ``arrays/`` prefix)."""
    if umap_path.startswith("arrays/"):
        return "arrays/" + prob_map_path(umap_path[len("arrays/"):])
    return umap_path.replace("umap/", "prob/", 1)


def region_prob_path(umap_path: str) -> str:
    """Where a multi-region prediction's per-voxel probability of its predicted region lives
    (``umap/<version>/<uid>`` -> ``region_prob/<version>/<uid>``)."""
    if umap_path.startswith("arrays/"):
        return "arrays/" + region_prob_path(umap_path[len("arrays/"):])
    return umap_path.replace("umap/", "region_prob/", 1)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def read_file(path: str) -> bytes:
    """A whole file through ``os`` calls (no buffered file object: export and ingest read one per case)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return read_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_fd(fd: int, size: int) -> bytes:
    """``size`` bytes from an open file (its size at ``fstat``), fewer when it ends sooner: the reads stop at
    ``size`` without asking for the end (one system call for a small file, not two)."""
    parts, got = [], 0
    while got < size or size == 0:
        chunk = os.read(fd, max(size - got, 1 << 16))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def write_file(path: str, data: bytes) -> None:
    """Create or truncate ``path`` and write ``data`` through ``os`` calls (not atomic: see :func:`_atomic_write`)."""
    fd = os.open(path, _CREATE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it over ``path`` (a crash never leaves
    half a file under the real name). Plain strings and ``os`` calls: ingest writes two files per case. The
    temporary name is the process's and thread's own, so threads writing the same file (ingest's writer thread
    beside the caller, or two pushes' placeholder image) each rename a whole file of their own."""
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        try:
            write_file(tmp, data)
        except FileNotFoundError:  # the folder is made on first use (not checked before every file)
            os.makedirs(folder, exist_ok=True)
            write_file(tmp, data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a failed write (disk full, interrupted) leaves neither half a file nor a temporary
        raise


class ImageStore:
    """A folder of images (``images/``), masks (``masks/``) and arrays (``arrays/``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        """Absolute location of a store-relative path."""
        return self.root / rel

    # ---- writing (atomic: a crash never leaves half a file) -----------------------------
    def put_png(self, rel: str, array: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
        _atomic_write(self.root / rel, buf.getvalue())
        return rel

    def put_bytes(self, rel: str, data: bytes, *, unreferenced: bool = False) -> str:
        """Store a file's bytes as they are (an image or mask PNG already in the store's form).

        ``unreferenced``: ``rel`` is a new name that no ledger row points to yet (ingest writes a case's files
        before its rows): written in place, without the temporary file and rename, as a crash can at worst
        leave a partial file no row names, which the next ingest of that case overwrites."""
        target = os.path.join(self.root, rel)
        if not unreferenced:
            _atomic_write(target, data)
            return rel
        try:
            try:
                write_file(target, data)
            except FileNotFoundError:  # the folder is made on first use
                os.makedirs(os.path.dirname(target), exist_ok=True)
                write_file(target, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)  # a failed write (disk full, interrupted) leaves no half file
            raise
        return rel

    def put_image(self, uid: str, image: np.ndarray) -> str:
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image {uid}: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
        return self.put_png(f"images/{uid}.png", image)

    def put_mask(self, name: str, mask: np.ndarray) -> str:
        """Store a binary mask as a 0/255 PNG under ``masks/<name>.png`` (read back as {0, 1}), a 2D region label
        map (labels up to 254, some above 1: ``data.regions``) as a grey PNG of its labels; a volume's mask
        (D, H, W) as a label map ``masks/<name>.npy`` (:meth:`put_volume_mask`: 0 / 1, or region labels).
        :meth:`load_mask` reads every form back as {0, 1}, :meth:`load_label_map` with its labels."""
        m = np.asarray(mask)
        top = int(m.max(initial=0))
        if m.ndim == 3:  # region labels 1..254 are kept (data.regions); a 0/255 mask is binarised
            return self.put_volume_mask(name, m.astype(np.uint8) if top < 255 else binarise(m))
        if 1 < top < 255 and m.dtype != bool:  # a 2D region label map (data.regions): values 2..254 kept as they are
            return self.put_png(f"masks/{name}.png", m.astype(np.uint8))
        return self.put_png(f"masks/{name}.png", binarise(m) * 255)

    def put_array(self, name: str, array: np.ndarray) -> str:
        return self._put_npy(f"arrays/{name}.npy", array)

    def put_volume(self, uid: str, volume: np.ndarray) -> str:
        """Store a normalised volume, float32 ``(C, D, H, W)`` (sequences, slices, rows, columns), as
        ``volumes/<uid>.npy``."""
        if volume.ndim != 4:
            raise ValueError(f"volume {uid}: expected (C, D, H, W), got shape {volume.shape}")
        return self._put_npy(f"volumes/{uid}.npy", np.ascontiguousarray(volume, dtype=np.float32))

    def put_volume_mask(self, name: str, mask: np.ndarray) -> str:
        """Store a volume's label map, uint8 ``(D, H, W)`` (0 background, region ids kept, 255 = not
        annotated), as ``masks/<name>.npy``; :meth:`load_mask` reads it back binarised like every mask."""
        if mask.ndim != 3:
            raise ValueError(f"volume mask {name}: expected (D, H, W), got shape {mask.shape}")
        return self._put_npy(f"masks/{name}.npy", np.ascontiguousarray(mask, dtype=np.uint8))

    def _put_npy(self, rel: str, array: np.ndarray) -> str:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        _atomic_write(self.root / rel, buf.getvalue())
        return rel

    # ---- reading ------------------------------------------------------------------------
    def load_image(self, rel: str) -> np.ndarray:
        """A stored image as written: uint8 (H, W) or (H, W, 3)."""
        with Image.open(self.root / rel) as im:
            return np.asarray(im)

    def load_volume(self, rel: str) -> np.ndarray:
        """A stored volume as written: float32 (C, D, H, W)."""
        return read_npy(self.root / rel)

    def load_label_map(self, rel: str) -> np.ndarray:
        """A stored mask with its labels: a volume's ``.npy`` as written (region ids, 255 = not annotated),
        uint8 (D, H, W); a 2D PNG (H, W) with 255 (the binary masks' lesion) read as label 1."""
        if rel.endswith(".npy"):
            return read_npy(self.root / rel)
        with Image.open(self.root / rel) as im:
            m = np.asarray(im.convert("L") if im.mode not in ("L", "P") else im).astype(np.uint8)
        return np.where(m == 255, 1, m).astype(np.uint8)

    def load_mask(self, rel: str) -> np.ndarray:
        """A stored mask as uint8 {0, 1} (a PNG image mask; a ``.npy`` volume mask, 255 = not annotated
        kept out: binarised as lesion only where a region id 1..254 is)."""
        if rel.endswith(".npy"):
            m = self.load_label_map(rel)
            return ((m > 0) & (m != 255)).astype(np.uint8)
        with Image.open(self.root / rel) as im:
            return binarise(np.asarray(im))

    def load_mask_at(self, rel: str, shape: tuple[int, ...]) -> np.ndarray:
        """A stored mask of any size (a native human or truth mask, a model-size predicted or
        pseudo-mask) as uint8 {0, 1} at ``shape`` = (height, width), nearest-neighbour."""
        return mask_at(self.load_mask(rel), shape)

    def load_array(self, rel: str) -> np.ndarray:
        return read_npy(self.root / rel)

    def load_ignore(self, rel: str) -> np.ndarray:
        """A pseudo-mask's ignore map (bool ``.npy`` array, or a PNG mask) as uint8 {0, 1}."""
        return binarise(self.load_array(rel)) if rel.endswith(".npy") else self.load_mask(rel)
