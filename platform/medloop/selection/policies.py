"""Pseudo-label policies PL, CPL and UPS (Cheng et al., MTTU-Net, IEEE TMI 2022, Sec. III-B, Eq. 19).

Every policy has the same signature and is registered in ``POLICIES``::

    select(confidence, uncertainty=None, *, tau_c=0.9, tau_u=0.05) -> bool mask (N,)

* ``pl``  -- traditional pseudo-labelling: every prediction is accepted.
* ``cpl`` -- confidence-based: ``confidence >= tau_c``.
* ``ups`` -- uncertainty-aware (Eq. 19): ``g = [mu(p) <= tau_u] * [p >= tau_c]``.
* ``none`` -- accepts nothing: active learning without class pseudo-labels (a baseline arm of the
  label-efficiency benchmark). Pseudo-masks are decided separately, by the mask gate; set
  ``selection.mask_gate = 0`` as well for no pseudo-mask either.

``confidence`` is the probability of the predicted class. ``uncertainty`` is whichever measure the
caller chose (``SelectionConfig.measure``): MC std of the predicted class's probability (the choice
of Cheng et al., MTTU-Net, IEEE TMI 2022; tau_u = 0.05 with T = 10 passes), predictive entropy (nats, at most
log K), mutual information (BALD, nats) or evidential vacuity ``K / S`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 1).
``tau_u`` is in the units of that measure, so each measure needs its own threshold; for vacuity it
also depends on the head's number of classes K (a 3-class head and a 2-class pixel head with the same total
evidence have different vacuity): see :func:`vacuity_tau_from_evidence`.

Non-finite confidence or uncertainty is never accepted by CPL / UPS. Guarantee:
``none ⊆ ups ⊆ cpl ⊆ pl`` for the same arrays and thresholds.
"""

from __future__ import annotations

import numpy as np

from medloop.selection import POLICIES


def _as_1d(x: np.ndarray | None, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"policy needs {name!r} (got None)")
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    return arr


@POLICIES.register("pl")
def pl(
    confidence: np.ndarray, uncertainty: np.ndarray | None = None, *, tau_c: float = 0.9, tau_u: float = 0.05
) -> np.ndarray:
    """PL: accept every prediction (thresholds ignored)."""
    conf = _as_1d(confidence, "confidence")
    return np.ones(conf.shape[0], dtype=bool)


@POLICIES.register("cpl")
def cpl(
    confidence: np.ndarray, uncertainty: np.ndarray | None = None, *, tau_c: float = 0.9, tau_u: float = 0.05
) -> np.ndarray:
    """CPL: accept when ``confidence >= tau_c`` (the second factor of Eq. 19)."""
    conf = _as_1d(confidence, "confidence")
    return conf >= tau_c  # NaN compares False


@POLICIES.register("ups")
def ups(
    confidence: np.ndarray, uncertainty: np.ndarray | None = None, *, tau_c: float = 0.9, tau_u: float = 0.05
) -> np.ndarray:
    """UPS (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19): accept when ``uncertainty <= tau_u`` and
    ``confidence >= tau_c``."""
    conf = _as_1d(confidence, "confidence")
    unc = _as_1d(uncertainty, "uncertainty")
    if unc.shape != conf.shape:
        raise ValueError(f"uncertainty shape {unc.shape} != confidence shape {conf.shape}")
    return (conf >= tau_c) & (unc <= tau_u)


@POLICIES.register("none")
def none(
    confidence: np.ndarray, uncertainty: np.ndarray | None = None, *, tau_c: float = 0.9, tau_u: float = 0.05
) -> np.ndarray:
    """No pseudo-labels: accept nothing (thresholds ignored)."""
    conf = _as_1d(confidence, "confidence")
    return np.zeros(conf.shape[0], dtype=bool)


def vacuity_tau_from_evidence(min_evidence: float, num_classes: int) -> float:
    """Vacuity threshold for a K-class evidential head that asks for total evidence >= ``min_evidence``.

    Vacuity is ``u = K / S`` with ``S = sum(alpha) = E + K`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 1), so
    ``E >= E_min`` is ``u <= K / (E_min + K)``. The same evidence requirement gives a different ``tau_u`` for the
    class head (K classes) and the pixel head (K = 2), which is why vacuity thresholds are per head.
    """
    if num_classes < 1 or min_evidence < 0:
        raise ValueError("num_classes must be >= 1 and min_evidence >= 0")
    return float(num_classes) / (float(min_evidence) + float(num_classes))
