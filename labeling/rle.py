"""Binary masks <-> Label Studio brush RLE (the format of ``BrushLabels`` results).

Label Studio stores a brush region as the run-length encoding of an RGBA image (H * W * 4
bytes, the painted pixels having alpha 255). Encoding and decoding use
``label_studio_sdk.converter.brush``; a decoded mask is the alpha channel > 0.
"""

from __future__ import annotations

import numpy as np
from label_studio_sdk.converter import brush


class RLEError(ValueError):
    """A brush RLE that does not decode to the expected image size."""


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) binary mask -> brush RLE (list of ints)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got shape {m.shape}")
    return [int(v) for v in brush.mask2rle((m > 0).astype(np.uint8) * 255)]


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
