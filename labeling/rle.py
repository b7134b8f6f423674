"""Binary masks <-> Label Studio brush RLE (the format of ``BrushLabels`` results).

Label Studio stores a brush region as the run-length encoding of an RGBA image (H * W * 4
bytes, the painted pixels having alpha 255), bit-packed as thi.ng's ``rle-pack`` writes it: a
53-bit header (value count in 32 bits, word size - 1 in 5, the four run-size classes 3/4/8/16 bits
- 1 in 4 each), then per run a flag (0 one value, 1 a repeat), the run-size class in 2 bits, the
run length - 1 in that many bits and the 8-bit value; zero bits pad to a whole byte (a full zero
byte when already aligned). ``mask_to_rle`` encodes with numpy over the runs (byte-identical to
``label_studio_sdk.converter.brush.mask2rle``, which builds a bit string character by character
and is the push's costliest step); decoding uses ``brush.decode_rle``; a decoded mask is the
alpha channel > 0.
"""

from __future__ import annotations

import numpy as np
from label_studio_sdk.converter import brush

_RUN_BITS = np.array([3, 4, 8, 16], np.int64)  # rle-pack's run-size classes (Label Studio's defaults)
_LONGEST = 1 << 16  # the longest run one record holds


class RLEError(ValueError):
    """A brush RLE that does not decode to the expected image size."""


def _records(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs (length >= 1, uint8 value) -> the rle-pack records as (code, bit count) pairs, most
    significant bit first. A run longer than 2^16 is split into records of 2^16 and the rest."""
    lengths = lengths.astype(np.int64)
    values = values.astype(np.int64)
    long_runs = lengths > 256
    pieces = np.where(long_runs, (lengths - 1) // _LONGEST + 1, 1)
    lengths_rep = np.repeat(lengths, pieces)
    values = np.repeat(values, pieces)
    # the position of each record within its run: the first ones hold 2^16 values, the last the rest
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    nth = np.arange(len(lengths_rep)) - first
    last = nth == np.repeat(pieces, pieces) - 1
    lengths = np.where(last, lengths_rep - nth * _LONGEST, _LONGEST)
    long_runs = np.repeat(long_runs, pieces)
    size_class = np.where(long_runs, 3, np.searchsorted(1 << _RUN_BITS, lengths))
    run_bits = _RUN_BITS[size_class]
    repeat = (lengths > 1) | long_runs  # the rest of a long run is a repeat record, even of one value
    # a single value is flag 0, class 0, length field 0: only its value is non-zero
    code = np.where(repeat, ((4 | size_class) << (run_bits + 8)) | ((lengths - 1) << 8), 0) | values
    return code, 3 + run_bits + 8


def _runs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D array's runs of equal values: (index of each run's last element, run lengths)."""
    ends = np.append(np.flatnonzero(a[1:] != a[:-1]), a.size - 1) if a.size else np.zeros(0, np.int64)
    return ends, np.diff(np.append(-1, ends))


def encode_rle(arr: np.ndarray) -> list[int]:
    """A 1-D uint8 array -> brush RLE bytes (Label Studio's word size 8, run-size classes 3/4/8/16)."""
    a = np.asarray(arr).ravel()
    ends, lengths = _runs(a)
    return _pack(a.size, lengths, a[ends])


def _pack(count: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    code, bits = _records(lengths, values)
    header_code = np.array([count, 7, *(_RUN_BITS - 1)], np.int64)
    header_bits = np.array([32, 5, 4, 4, 4, 4], np.int64)
    code = np.concatenate([header_code, code])
    bits = np.concatenate([header_bits, bits])
    total = int(bits.sum())
    start = np.cumsum(bits) - bits
    owner = np.repeat(np.arange(len(bits)), bits)
    shift = np.repeat(bits - 1, bits) - (np.arange(total) - start[owner])
    stream = ((code[owner] >> shift) & 1).astype(np.uint8)
    stream = np.concatenate([stream, np.zeros(8 - total % 8, np.uint8)])
    return np.packbits(stream).tolist()


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) binary mask -> brush RLE (list of ints): the RGBA image with every channel 255 on the mask."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got shape {m.shape}")
    flat = (m > 0).ravel()
    ends, lengths = _runs(flat)  # runs of pixels; each pixel is 4 equal bytes (R, G, B, alpha)
    return _pack(4 * flat.size, 4 * lengths, np.where(flat[ends], 255, 0))


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Brush RLE -> (height, width) uint8 {0, 1} mask; :class:`RLEError` when the size differs."""
    try:
        flat = brush.decode_rle(rle)
    except Exception as err:  # malformed bit stream
        raise RLEError(f"brush RLE cannot be decoded ({type(err).__name__}: {err})") from None
    want = height * width * 4
    if flat.size != want:
        pixels = flat.size // 4
        raise RLEError(f"brush mask has {pixels} pixels, the image has {height}x{width} = {height * width}")
    return (flat.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)
