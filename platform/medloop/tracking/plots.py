"""Round figures as PNG files (matplotlib, Agg backend): reliability diagram, confusion matrix,
uncertainty histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(bins: Sequence[Mapping[str, Any]], path: Path, title: str = "reliability") -> Path:
    """Bars of accuracy per confidence bin against the diagonal."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    for b in bins:
        if b.get("count", 0) and b.get("accuracy") is not None:
            ax.bar(b["lo"], b["accuracy"], width=b["hi"] - b["lo"], align="edge", edgecolor="k", alpha=0.7)
    ax.plot([0, 1], [0, 1], "r--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def uncertainty_histograms(values: Mapping[str, np.ndarray], path: Path) -> Path:
    """One histogram per uncertainty measure over the pool."""
    plt = _plt()
    names = [k for k, v in values.items() if np.size(v)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3 * max(1, len(names)), 3), dpi=80, squeeze=False)
    for ax, name in zip(axes[0], names):
        v = np.asarray(values[name], dtype=float)
        ax.hist(v[np.isfinite(v)], bins=20)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
