"""Round-level gates: no pseudo-labels from a poorly calibrated model (calibration gate), no
pseudo-masks from a model that segments the validation images poorly (segmentation gate).

Cheng et al., MTTU-Net, IEEE TMI 2022 (Sec. III-B, Fig. 3a) motivates UPS by calibration: confident predictions of
a poorly calibrated network are often wrong. The gate checks the validation ECE (same paper, Eq. 16-18)
of the round's model against ``SelectionConfig.max_ece`` before any pseudo-label is accepted.
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


def segmentation_gate(val_dice: float | None, min_val_dice: float) -> tuple[bool, str]:
    """``(allow_masks, reason)``: pseudo-masks are allowed iff the round's validation Dice >= ``min_val_dice``.

    The pixel-level UPS rule trusts masks whose pixels are certain; a model trained on few masks can
    be certain about wrong masks (the mean pixel MC std of a confidently empty or misplaced mask is
    small), and training on them pulls the next round's Dice down (bench/README.md, section 3).
    ``min_val_dice = 0`` disables the gate. A missing Dice (no validation masks) closes it otherwise.
    """
    if min_val_dice <= 0:
        return True, "segmentation gate off (min_val_dice 0): pseudo-masks allowed"
    if val_dice is None or not math.isfinite(float(val_dice)):
        return False, f"validation Dice unavailable ({val_dice!r}): no pseudo-masks this round"
    dice = float(val_dice)
    if dice < min_val_dice:
        return False, f"validation Dice {dice:.4f} < min_val_dice {min_val_dice:.4f}: no pseudo-masks this round"
    return True, f"validation Dice {dice:.4f} >= min_val_dice {min_val_dice:.4f}: pseudo-masks allowed"
