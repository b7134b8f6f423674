"""Selection: pseudo-label policies, class balancing, pseudo-masks, acquisition functions,
the annotation queue, diversity, audits and the calibration gate.

Everything here is a pure function on numpy arrays (no I/O, no ledger access); the round
orchestrator reads scores from the ledger, calls these, and writes the decisions back.
See ``docs/selection.md`` for the whole API.

Registries (pick by the names in ``SelectionConfig``)::

    POLICIES.get("ups")(confidence, uncertainty, tau_c=0.9, tau_u=0.05) -> bool mask
    ACQUISITIONS.get("entropy")(scores) -> float64 score, higher = queue first

Top-level entry points: :func:`decide_pseudo_labels` (class + mask pseudo-labels of a round)
and :func:`build_queue` (the annotation queue).
"""

from __future__ import annotations

from medloop.registry import Registry

POLICIES: Registry = Registry("pseudo-label policy")
ACQUISITIONS: Registry = Registry("acquisition function")

# Importing the modules fills the registries.
from medloop.selection.acquisition import acquisition_scores, build_queue  # noqa: E402
from medloop.selection.audit import audit_precision, audit_sample  # noqa: E402
from medloop.selection.balance import balance_to_ratio, balanced_counts  # noqa: E402
from medloop.selection.decide import (  # noqa: E402
    REASONS,
    PseudoLabelParams,
    decide_pseudo_labels,
    reason_names,
)
from medloop.selection.diversity import k_center_greedy  # noqa: E402
from medloop.selection.gate import calibration_gate, segmentation_gate  # noqa: E402
from medloop.selection.policies import cpl, pl, ups, vacuity_tau_from_evidence  # noqa: E402
from medloop.selection.pseudo_masks import (  # noqa: E402
    IGNORE_INDEX,
    mask_gate,
    mean_pixel_uncertainty,
    pseudo_mask,
    training_target,
)

__all__ = [
    "POLICIES",
    "ACQUISITIONS",
    "pl",
    "cpl",
    "ups",
    "vacuity_tau_from_evidence",
    "balance_to_ratio",
    "balanced_counts",
    "IGNORE_INDEX",
    "pseudo_mask",
    "mask_gate",
    "mean_pixel_uncertainty",
    "training_target",
    "k_center_greedy",
    "acquisition_scores",
    "build_queue",
    "audit_sample",
    "audit_precision",
    "calibration_gate",
    "segmentation_gate",
    "REASONS",
    "PseudoLabelParams",
    "decide_pseudo_labels",
    "reason_names",
]
