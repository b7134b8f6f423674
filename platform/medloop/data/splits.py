"""Stratified train / val / test splits with a fixed seed, and the move of part of train to the pool."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import train_test_split


def _take(idx: list[int], fraction: float, strata: list[str], seed: int) -> tuple[list[int], list[int]]:
    """Split ``idx`` into (rest, taken) with ``taken`` about ``fraction`` of it, stratified when possible."""
    n_take = int(round(fraction * len(idx)))
    if n_take <= 0 or not idx:
        return list(idx), []
    if n_take >= len(idx):
        return [], list(idx)
    labels = [strata[i] for i in idx]
    counts = Counter(labels)
    can_stratify = min(counts.values()) >= 2 and len(counts) <= min(n_take, len(idx) - n_take)
    rest, taken = train_test_split(
        np.asarray(idx), test_size=n_take, random_state=seed, stratify=labels if can_stratify else None
    )
    return sorted(rest.tolist()), sorted(taken.tolist())


def assign_splits(
    strata: list[str | None],
    fractions: tuple[float, float, float] | list[float] = (0.7, 0.15, 0.15),
    unlabeled_fraction: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Split names ("train", "val", "test", "pool") for items with the given class strata.

    Items whose stratum is None have no label at all and go straight to "pool". The rest is
    split train / val / test by ``fractions`` (stratified by class, ``sklearn``), then
    ``unlabeled_fraction`` of train moves to "pool" (stratified again). Pure and deterministic.
    """
    train_f, val_f, test_f = fractions
    keys = ["" if s is None else s for s in strata]
    labeled = [i for i, s in enumerate(strata) if s is not None]
    out = ["pool"] * len(strata)
    held = val_f + test_f
    train, held_idx = _take(labeled, held, keys, seed)
    val, test = _take(held_idx, test_f / held if held > 0 else 0.0, keys, seed + 1)
    train, pool = _take(train, unlabeled_fraction, keys, seed + 2)
    for name, group in (("train", train), ("val", val), ("test", test), ("pool", pool)):
        for i in group:
            out[i] = name
    return out
