"""Exported labels as Label Studio tasks (its JSON import format), for ``medloop export --format labelstudio``.

One task per label: ``data`` holds the image address, the sentence of the labeling interface and the
label's provenance; a human label is an ``annotation``, a pseudo-label a ``prediction`` (model version
= its author, ``round-N/<selector>``), both with the result names of :mod:`medloop.labeling.project`
(class choice ``class`` -> ``image``, brush ``lesion`` -> ``image`` as RLE at the image's native size).
An empty mask gives no brush region (as the pre-annotations of :mod:`medloop.labeling.push`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.config import Campaign

from .project import IMAGE_TO, UNCERTAINTY_TO
from .push import prediction_results

#: the read-only uncertainty image of the interface has nothing to show for an exported label
NO_UNCERTAINTY = "_no-uncertainty.png"


def export_result(campaign: Campaign, class_name: str | None, mask: np.ndarray | None,
                  region_id: str) -> list[dict[str, Any]]:
    """The ``result`` list of an annotation or prediction: the class choice and the brush region, as
    medloop's pre-annotations write them (:func:`medloop.labeling.push.prediction_results`)."""
    return prediction_results(class_name, mask, campaign.labeling.lesion_label, region_id)


def export_summary(kind: str, class_name: str | None, author: str | None, has_mask: bool) -> str:
    """The sentence shown above the image, e.g. ``human label: benign (a@b.org); lesion drawn``."""
    what = "human label" if kind == "human" else "pseudo-label"
    text = f"{what}: {class_name or 'no class'}"
    if author:
        text += f" ({author})"
    return text + ("; lesion drawn" if has_mask else "; no lesion drawn")


def export_task(
    campaign: Campaign,
    *,
    kind: str,
    class_name: str | None,
    mask: np.ndarray | None,
    image: str,
    data: dict[str, Any],
    author: str | None,
    region_id: str,
    uncertainty_image: str = NO_UNCERTAINTY,
) -> dict[str, Any]:
    """One importable task (see the module docstring); ``data`` is added to the task data as it is."""
    result = export_result(campaign, class_name, mask, region_id)
    has_mask = mask is not None and bool(mask.any())
    task: dict[str, Any] = {"data": {
        IMAGE_TO: image,
        UNCERTAINTY_TO: uncertainty_image,
        "summary": export_summary(kind, class_name, author, has_mask),
        "has_mask": mask is not None,
        **data,
    }}
    if kind == "human":
        task["annotations"] = [{"result": result, "was_cancelled": False, "ground_truth": False}]
    else:
        task["predictions"] = [{"model_version": author or "pseudo", "result": result}]
    return task
