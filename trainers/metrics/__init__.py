"""Segmentation, classification and calibration metrics (numpy in, floats/arrays out)."""

from medloop.trainers.metrics.calibration import (
    adaptive_ece,
    aurc,
    brier_score,
    calibration_metrics,
    ece,
    nll,
    pixel_predictions,
    reliability_bins,
    risk_coverage,
)
from medloop.trainers.metrics.classification import (
    accuracy,
    auc_ovr,
    classification_metrics,
    confusion_matrix,
    f1_score,
    sensitivity,
    specificity,
)
from medloop.trainers.metrics.regions import mean_region_metrics, region_dice, region_metrics
from medloop.trainers.metrics.segmentation import (
    assd,
    dice,
    empty_mask_rate,
    hd95,
    iou,
    lesion_cases,
    lesion_dice,
    lesion_iou,
    no_lesion_cases,
    segmentation_metrics,
)

__all__ = [
    "adaptive_ece", "aurc", "brier_score", "calibration_metrics", "ece", "nll", "pixel_predictions", "reliability_bins",
    "risk_coverage", "accuracy", "auc_ovr", "classification_metrics", "confusion_matrix", "f1_score",
    "sensitivity", "specificity", "assd", "dice", "hd95", "iou", "segmentation_metrics",
    "empty_mask_rate", "lesion_cases", "lesion_dice", "lesion_iou", "no_lesion_cases",
    "mean_region_metrics", "region_dice", "region_metrics",
]
