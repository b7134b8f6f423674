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
    groups: list[int] | None = None,
) -> list[str]:
    """Split names ("train", "val", "test", "pool") for items with the given class strata.

    Items whose stratum is None have no label at all and go straight to "pool". The rest is
    split train / val / test by ``fractions`` (stratified by class, ``sklearn``), then
    ``unlabeled_fraction`` of train moves to "pool" (stratified again). Pure and deterministic.

    ``groups`` (one id per item, e.g. near-duplicate images) keeps every group inside one split,
    see ``_assign_grouped``; ``None``, or only singleton groups, gives exactly the plain split.
    """
    if groups is not None:
        if len(groups) != len(strata):
            raise ValueError(f"assign_splits: {len(groups)} group ids for {len(strata)} items")
        if len(set(groups)) < len(groups):
            return _assign_grouped(strata, fractions, unlabeled_fraction, seed, list(groups))
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


# ---- group-wise splits ------------------------------------------------------------------------


def _group_stratum(members: list[int], strata: list[str | None]) -> str | None:
    """A group's stratum: None when any member has no label, else its most common class (ties: first)."""
    classes = [strata[i] for i in members]
    if any(c is None for c in classes):
        return None
    return Counter(classes).most_common(1)[0][0]


def _quotas(sizes: dict[str, int], n_take: int) -> dict[str, int]:
    """``n_take`` shared among strata in proportion to their sizes (largest remainder, ties by name)."""
    total = sum(sizes.values())
    exact = {k: n_take * v / total for k, v in sizes.items()}
    quota = {k: int(e) for k, e in exact.items()}
    rest = sorted(sizes, key=lambda k: (-(exact[k] - quota[k]), k))
    for k in rest[: n_take - sum(quota.values())]:
        quota[k] += 1
    return quota


def _take_groups(
    units: list[int], fraction: float, members: list[list[int]], stratum: list[str], seed: int
) -> tuple[list[int], list[int]]:
    """Split group indices ``units`` into (rest, taken), ``taken`` holding about ``fraction`` of the items.

    Each stratum gets its share of ``round(fraction * items)`` (largest remainder); groups are visited
    in a seeded random order and taken while they fit the stratum's quota, then, for what is still
    missing, while they fit the total. Whole groups only, so the count can miss by less than a group.
    """
    size = {u: len(members[u]) for u in units}
    total = sum(size.values())
    n_take = int(round(fraction * total))
    if n_take <= 0 or not units:
        return list(units), []
    if n_take >= total:
        return [], list(units)
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    per_stratum: Counter[str] = Counter()
    for u in units:
        per_stratum[stratum[u]] += size[u]
    quota = _quotas(dict(per_stratum), n_take)
    got: Counter = Counter()
    taken: set[int] = set()
    for u in order:
        if got[stratum[u]] + size[u] <= quota[stratum[u]]:
            got[stratum[u]] += size[u]
            taken.add(u)
    n = sum(got.values())
    for u in order:
        if n >= n_take:
            break
        if u not in taken and n + size[u] <= n_take:
            n += size[u]
            taken.add(u)
    return sorted(u for u in units if u not in taken), sorted(taken)


def _assign_grouped(
    strata: list[str | None],
    fractions: tuple[float, float, float] | list[float],
    unlabeled_fraction: float,
    seed: int,
    groups: list[int],
) -> list[str]:
    """``assign_splits`` with whole groups: the same three steps on groups, weighted by their size.

    A group's stratum is its members' most common class; a group with an unlabeled member goes to
    "pool" whole (its labeled members keep only their hidden truth there).
    """
    train_f, val_f, test_f = fractions
    index: dict[int, int] = {}
    members: list[list[int]] = []
    for i, g in enumerate(groups):
        if g not in index:
            index[g] = len(members)
            members.append([])
        members[index[g]].append(i)
    group_strata = [_group_stratum(m, strata) for m in members]
    labeled = [u for u, s in enumerate(group_strata) if s is not None]
    keys = ["" if s is None else s for s in group_strata]
    held = val_f + test_f
    train, held_units = _take_groups(labeled, held, members, keys, seed)
    val, test = _take_groups(held_units, test_f / held if held > 0 else 0.0, members, keys, seed + 1)
    train, pool = _take_groups(train, unlabeled_fraction, members, keys, seed + 2)
    out = ["pool"] * len(strata)
    for name, units in (("train", train), ("val", val), ("test", test), ("pool", pool)):
        for u in units:
            for i in members[u]:
                out[i] = name
    return out
