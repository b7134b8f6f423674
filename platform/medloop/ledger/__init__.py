"""The ledger: samples, labels with provenance, rounds, predictions, selections, tasks."""

from .schema import (
    LABEL_KINDS,
    SCHEMA_VERSION,
    SPLITS,
    STEPS,
    AnnotationTask,
    Label,
    Prediction,
    Quarantine,
    Round,
    RoundStep,
    Sample,
    Selection,
)
from .store import (
    HumanLabelExists,
    Ledger,
    LedgerError,
    PseudoLabelRow,
    active_label,
    add_human_label,
    add_pseudo_label,
    add_pseudo_labels,
    add_truth_label,
    human_labelled,
    retire_pseudo_labels,
)

__all__ = [
    "LABEL_KINDS", "SCHEMA_VERSION", "SPLITS", "STEPS", "AnnotationTask", "Label", "Prediction", "Quarantine",
    "Round", "RoundStep", "Sample", "Selection", "HumanLabelExists", "Ledger", "LedgerError", "active_label",
    "add_human_label", "add_pseudo_label", "add_pseudo_labels", "add_truth_label", "human_labelled",
    "PseudoLabelRow", "retire_pseudo_labels",
]
