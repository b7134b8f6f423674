"""Calibration gate: no pseudo-labels in a round whose model is poorly calibrated.

Seed 002 (Sec. III-B, Fig. 3a) motivates UPS by calibration: confident predictions of a poorly
calibrated network are often wrong. The gate checks the validation ECE (seed 002 Eq. 16-18) of the
round's model against ``SelectionConfig.max_ece`` before any pseudo-label is accepted.
"""

from __future__ import annotations

import math


def calibration_gate(val_ece: float | None, max_ece: float) -> tuple[bool, str]:
    """``(allow_pseudo, reason)``: allowed iff ``val_ece <= max_ece``.

    A missing or non-finite ECE is treated as "not known to be calibrated": no pseudo-labels.
    The reason is a one-line sentence for ``Round.notes["gate"]``.
    """
    if val_ece is None or not math.isfinite(float(val_ece)):
        return False, (
            f"validation ECE unavailable ({val_ece!r}): no pseudo-labels this round (annotation queue only)"
        )
    ece = float(val_ece)
    if ece > max_ece:
        return False, (
            f"validation ECE {ece:.4f} > max_ece {max_ece:.4f}: "
            "no pseudo-labels this round (annotation queue only)"
        )
    return True, f"validation ECE {ece:.4f} <= max_ece {max_ece:.4f}: pseudo-labels allowed"
