"""Near-duplicate groups and group-wise splits: found exactly, never across splits, old splits kept."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter
from sqlalchemy import select

from medloop.config import parse_campaign
from medloop.data.duplicates import (
    count_pairs,
    group_stats,
    groups_from_pairs,
    near_duplicate_groups,
    near_duplicate_pairs,
    thumbnails,
)
from medloop.data.ingest import ingest
from medloop.data.splits import assign_splits
from medloop.ledger import Ledger, Sample

BUSI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "busi"
CLASSES = ["normal", "benign", "malignant"]


# ---- planted images ------------------------------------------------------------------------------------


def scene(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth random grey picture (structure at the scale a 32x32 thumbnail keeps), uint8."""
    f = gaussian_filter(np.random.default_rng(seed).normal(size=(h, w)), sigma=6)
    f = (f - f.mean()) / f.std()
    return np.clip(128 + 40 * f, 0, 255).astype(np.uint8)


def noisy(img: np.ndarray, seed: int) -> np.ndarray:
    """The same picture re-acquired: small pixel noise."""
    n = np.random.default_rng(seed).normal(0, 6, img.shape)
    return np.clip(img + n, 0, 255).astype(np.uint8)


def caliper(img: np.ndarray) -> np.ndarray:
    """The same picture with two calipers drawn on it (white '+' marks)."""
    out = img.copy()
    h, w = img.shape[:2]
    for y, x in ((h // 3, w // 3), (2 * h // 3, 3 * w // 5)):
        out[y - 4 : y + 5, x] = 255
        out[y, x - 4 : x + 5] = 255
    return out


def brighter(img: np.ndarray) -> np.ndarray:
    """The same picture with other gain and offset."""
    return np.clip(img.astype(np.float64) * 0.8 + 30, 0, 255).astype(np.uint8)


def partition(ids) -> set[frozenset[int]]:
    """Groups as a set of member sets (id numbering does not matter)."""
    out: dict[int, set[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(int(g), set()).add(i)
    return {frozenset(m) for m in out.values()}


def planted() -> tuple[list[np.ndarray], set[frozenset[int]]]:
    """12 unrelated scenes, 4 of them with copies: noise, calipers, brightness, size, colour."""
    images = [scene(s) for s in range(12)]
    expected = {frozenset([i]) for i in range(12)}
    copies = {
        0: [noisy(images[0], 1)],
        3: [caliper(images[3]), brighter(caliper(images[3]))],  # a chain: one group of three
        5: [np.asarray(Image.fromarray(images[5]).resize((200, 150), Image.Resampling.BILINEAR))],
        8: [np.repeat(brighter(images[8])[..., None], 3, axis=2)],  # RGB copy
    }
    for base, extra in copies.items():
        members = {base}
        for img in extra:
            members.add(len(images))
            images.append(img)
        expected.discard(frozenset([base]))
        expected.add(frozenset(members))
    return images, expected


# ---- finding groups --------------------------------------------------------------------------------------


def test_planted_groups_found_exactly() -> None:
    images, expected = planted()
    groups = near_duplicate_groups(images, 0.99)
    assert groups.dtype == np.int64 and partition(groups) == expected
    assert sorted(set(groups.tolist())) == list(range(len(expected)))  # ids 0..G-1
    assert groups[0] == 0 and group_stats(groups) == (4, 9)
    # each planted copy correlates >= 0.99 with its original, unrelated scenes far below
    z = thumbnails(images)
    corr = np.corrcoef(z)
    same = np.equal.outer(groups, groups)
    off = ~np.eye(len(images), dtype=bool)
    assert corr[same & off].min() >= 0.99
    assert corr[~same].max() < 0.9
    pairs = near_duplicate_pairs(images, 0.99)
    assert count_pairs(images, 0.99) == len(pairs) == 1 + 3 + 1 + 1
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_tree_search_finds_the_pairs_of_the_full_matrix(monkeypatch) -> None:
    """Large sets are searched with a k-d tree on low-frequency DCT projections, then checked: the same
    pairs as the full correlation matrix, at every threshold (the matrix is not computed on this data)."""
    import medloop.data.duplicates as dup

    images, _ = planted()
    images += [scene(100 + s, 48, 64) for s in range(200)] + [noisy(scene(150, 48, 64), 2)]
    images += [np.zeros((40, 50), np.uint8), np.zeros((20, 20), np.uint8)]  # constant: only each other
    dense = {t: near_duplicate_pairs(images, t, method="dense") for t in (0.99, 0.9, 0.7, 0.5, 1.0)}
    assert len(dense[0.99]) == 6 + 1 + 1 and len(dense[0.7]) > len(dense[0.99]) and len(dense[0.5]) > 300
    assert np.array_equal(near_duplicate_pairs(images, 0.5, method="tree"), dense.pop(0.5))  # either way

    def refuse(*args):  # noqa: ANN002, ANN202
        raise AssertionError("the tree search fell back to the full matrix")

    monkeypatch.setattr(dup, "_dense_pairs", refuse)
    for t, pairs in dense.items():
        assert np.array_equal(near_duplicate_pairs(images, t, method="tree"), pairs), t
    monkeypatch.setattr(dup, "_DENSE_MAX", 100)  # auto: the tree above _DENSE_MAX images
    assert np.array_equal(near_duplicate_pairs(images, 0.99), dense[0.99])


def test_ball_queries_list_the_pairs_of_query_pairs() -> None:
    """Candidate pairs come from ball queries on every CPU, a chunk of query points at a time: exactly the
    pairs (i < j) that ``cKDTree.query_pairs`` lists, whatever the chunk size."""
    from scipy.spatial import cKDTree

    from medloop.data.duplicates import _ball_pairs

    points = np.random.default_rng(3).normal(size=(1500, 4))
    points[700] = points[10]  # a copy: distance 0
    tree = cKDTree(points, leafsize=16)
    want = tree.query_pairs(0.6, output_type="ndarray")
    want = want[np.lexsort((want[:, 1], want[:, 0]))]
    assert 1000 < len(want) and [10, 700] in want.tolist()
    for chunk in (1, 97, 1500, 4096):
        got = _ball_pairs(tree, points, 0.6, chunk=chunk)
        assert np.array_equal(got[np.lexsort((got[:, 1], got[:, 0]))], want), chunk


def test_zscore_rows_give_the_correlation_across_blocks() -> None:
    """Thumbnails are centred and scaled in blocks of rows: ``z @ z.T / d`` is Pearson's correlation
    (``np.corrcoef``) for rows on both sides of a block boundary, and a constant row is flagged and zero."""
    from medloop.data.duplicates import _BLOCK, _zscore

    rows = np.random.default_rng(4).random((_BLOCK + 5, 64)) * 255
    rows[_BLOCK + 1] = 7.0
    z, flat = _zscore(rows)
    assert flat.tolist() == [i == _BLOCK + 1 for i in range(len(rows))]
    assert not z[_BLOCK + 1].any()
    pick = [0, 3, _BLOCK - 1, _BLOCK, _BLOCK + 4]
    np.testing.assert_allclose(z[pick] @ z[pick].T / 64, np.corrcoef(rows[pick]), rtol=0, atol=1e-12)


def test_tree_search_falls_back_to_the_matrix_without_structure() -> None:
    """White-noise thumbnails have no low-frequency structure: too many candidates, the matrix is used."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(300)]
    images.append(np.clip(images[7].astype(np.int64) + 2, 0, 255).astype(np.uint8))
    pairs = near_duplicate_pairs(images, 0.5, method="tree")
    assert np.array_equal(pairs, near_duplicate_pairs(images, 0.5, method="dense")) and [7, 300] in pairs.tolist()
    with pytest.raises(ValueError, match="method"):
        near_duplicate_pairs(images, method="fast")


def test_threshold_one_groups_exact_copies_only() -> None:
    a, b = scene(1), scene(2)
    groups = near_duplicate_groups([a, a.copy(), noisy(a, 3), b], threshold=1.0)
    assert partition(groups) == {frozenset([0, 1]), frozenset([2]), frozenset([3])}
    assert partition(near_duplicate_groups([a, a.copy(), noisy(a, 3), b], threshold=0.0)) != partition(groups)


def test_constant_images_match_no_other_image() -> None:
    black = np.zeros((40, 50), np.uint8)
    grey_rgb = np.full((30, 30, 3), 128, np.uint8)
    images = [black, scene(4), grey_rgb, black.copy(), np.full((64, 64), 200, np.uint8)]
    thumbs = thumbnails(images)
    assert np.isfinite(thumbs).all()
    groups = near_duplicate_groups(images, 0.0)  # even a threshold of 0 lets no constant image in
    assert partition(groups) == {frozenset([0, 3]), frozenset([1]), frozenset([2]), frozenset([4])}


def test_edge_sizes_and_groups_from_pairs() -> None:
    assert near_duplicate_groups([]).tolist() == []
    assert near_duplicate_groups([scene(0)]).tolist() == [0]
    assert groups_from_pairs(5, np.array([[3, 4], [1, 3]])).tolist() == [0, 1, 2, 1, 1]
    assert group_stats([0, 1, 2, 1, 1]) == (1, 3) and group_stats([]) == (0, 0)


# ---- splits ------------------------------------------------------------------------------------------------

STRATA = [None if i % 11 == 5 else CLASSES[(i * 7) % 3 if i % 4 else 1] for i in range(40)]
CODE = {"r": "train", "v": "val", "t": "test", "p": "pool"}
# assign_splits' answers before groups existed: the plain split must never change
SNAPSHOT = {
    ((0.7, 0.15, 0.15), 0.0, 0): "trrrrpvvrrrrrrrrprtrrrrrvtrprvrrvrrttrpt",
    ((0.6, 0.2, 0.2), 0.5, 3): "tpvprpttrtvrrptrprvvrrvrprpptvpprvpptppp",
}


@pytest.mark.parametrize("args", list(SNAPSHOT), ids=str)
def test_without_groups_the_split_is_unchanged(args) -> None:
    expected = [CODE[c] for c in SNAPSHOT[args]]
    assert assign_splits(STRATA, *args) == expected
    assert assign_splits(STRATA, *args, groups=None) == expected
    assert assign_splits(STRATA, *args, groups=list(range(100, 140))) == expected  # singletons only


def straddling(splits: list[str], groups) -> list[int]:
    """Group ids whose members sit in more than one split."""
    seen: dict[int, set[str]] = {}
    for s, g in zip(splits, groups):
        seen.setdefault(int(g), set()).add(s)
    return sorted(g for g, names in seen.items() if len(names) > 1)


def test_groups_stay_whole_and_fractions_hold() -> None:
    rng = np.random.default_rng(7)
    strata: list[str | None] = []
    groups: list[int] = []
    for g in range(400):  # 400 lesions, a quarter imaged two or three times
        size = int(rng.choice([1, 1, 1, 2, 3]))
        cls = CLASSES[int(rng.choice(3, p=[0.2, 0.5, 0.3]))]
        strata += [cls] * size
        groups += [g] * size
    order = rng.permutation(len(groups))  # members of a group need not be adjacent
    strata = [strata[i] for i in order]
    groups = [groups[i] for i in order]
    n = len(strata)
    splits = assign_splits(strata, (0.7, 0.15, 0.15), 0.8, 0, groups)
    assert straddling(splits, groups) == []
    counts = Counter(splits)
    held = counts["val"] + counts["test"]
    assert 0 <= round(0.3 * n) - held < 3 and abs(counts["test"] - round(0.5 * held)) < 3
    assert abs(counts["pool"] - 0.8 * (n - held)) < 3
    for cls in CLASSES:  # stratified: each class about 15 % in test
        members = [s for s, c in zip(splits, strata) if c == cls]
        assert abs(members.count("test") / len(members) - 0.15) < 0.04, cls
    assert splits == assign_splits(strata, (0.7, 0.15, 0.15), 0.8, 0, groups)  # deterministic
    assert splits != assign_splits(strata, (0.7, 0.15, 0.15), 0.8, 1, groups)  # seeded


def test_group_with_an_unlabeled_member_goes_to_pool_whole() -> None:
    strata = ["benign", None, "benign", "malignant", "normal", "benign"] * 4
    groups = [0, 0, 1, 2, 3, 4] + list(range(5, 23))
    splits = assign_splits(strata, (0.5, 0.25, 0.25), 0.0, 0, groups)
    assert splits[0] == splits[1] == "pool"
    assert all(s == "pool" for s, c in zip(splits, strata) if c is None)
    assert straddling(splits, groups) == []


def test_mismatched_group_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="group ids"):
        assign_splits(["a", "b"], groups=[0])


@st.composite
def structures(draw):
    n = draw(st.integers(1, 60))
    n_groups = draw(st.integers(1, n))
    groups = draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    strata = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    val = draw(st.floats(0.0, 0.4))
    test = draw(st.floats(0.0, 0.4))
    unlabeled = draw(st.floats(0.0, 0.95))
    return strata, groups, (1.0 - val - test, val, test), unlabeled, draw(st.integers(0, 1000))


@settings(max_examples=200, deadline=None)
@given(structures())
def test_property_no_group_straddles(case) -> None:
    strata, groups, fractions, unlabeled, seed = case
    splits = assign_splits(strata, fractions, unlabeled, seed, groups)
    assert len(splits) == len(strata) and set(splits) <= {"train", "val", "test", "pool"}
    assert straddling(splits, groups) == []
    assert all(s == "pool" for s, c in zip(splits, strata) if c is None)
    assert splits == assign_splits(strata, fractions, unlabeled, seed, groups)
    # held-out size: never above the target, short by less than the largest group
    labeled_groups = {g for g in groups if all(c is not None for c, h in zip(strata, groups) if h == g)}
    n_labeled = sum(1 for g in groups if g in labeled_groups)
    largest = max(Counter(groups).values())
    held = sum(1 for s in splits if s in ("val", "test"))
    target = int(round((fractions[1] + fractions[2]) * n_labeled))
    assert 0 <= target - held < largest


# ---- ingest --------------------------------------------------------------------------------------------------


def write_with_copies(root: Path) -> dict[str, str]:
    """A generic dataset: 24 scenes, 3 of them with a near-duplicate; returns copy -> original file name."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,label"]
    for i in range(24):
        Image.fromarray(scene(100 + i)).save(root / "images" / f"case{i:02d}.png")
        rows.append(f"case{i:02d}.png,{CLASSES[i % 3]}")
    copies = {"dup0.png": "case00.png", "dup7.png": "case07.png", "dup13.png": "case13.png"}
    Image.fromarray(caliper(scene(100))).save(root / "images" / "dup0.png")
    Image.fromarray(noisy(scene(107), 5)).save(root / "images" / "dup7.png")
    Image.fromarray(brighter(scene(113))).save(root / "images" / "dup13.png")
    rows += ["dup0.png,normal", "dup7.png,benign", "dup13.png,malignant"]  # dup13: its own class differs
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return copies


def _splits_by_name(campaign) -> dict[str, str]:
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample.original_path, Sample.split)).all()
    ledger.close()
    return {Path(p).name: split for p, split in rows}


def _campaign(root: Path, **data):
    base = {"image_size": 32, "unlabeled_fraction": 0.5, "split": [0.5, 0.25, 0.25]}
    return parse_campaign({"name": "t", "root": str(root), "data": {**base, **data}})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ingest_keeps_planted_duplicates_in_one_split(tmp_path: Path, seed: int) -> None:
    copies = write_with_copies(tmp_path / "d")
    campaign = _campaign(tmp_path / "c", seed=seed)
    report = ingest(campaign, "generic", tmp_path / "d")
    assert report.added == 27
    assert (report.duplicate_groups, report.duplicate_images) == (3, 6)
    assert "near-duplicates: 3 groups, 6 images, each kept inside one split" in report.summary()
    splits = _splits_by_name(campaign)
    assert all(splits[copy] == splits[orig] for copy, orig in copies.items())
    assert sum(1 for s in splits.values() if s in ("val", "test")) in (13, 14)  # 0.5 of 27, whole groups


def test_ingest_threshold_one_splits_as_before(tmp_path: Path) -> None:
    write_with_copies(tmp_path / "d")
    report = ingest(_campaign(tmp_path / "c", duplicate_threshold=1.0), "generic", tmp_path / "d")
    assert (report.duplicate_groups, report.duplicate_images) == (0, 0)
    assert "near-duplicates" not in report.summary()


def test_reingest_new_copy_joins_the_existing_split(tmp_path: Path) -> None:
    copies = write_with_copies(tmp_path / "d")
    for name in copies:
        (tmp_path / "d" / "images" / name).unlink()
    campaign = _campaign(tmp_path / "c")
    first = ingest(campaign, "generic", tmp_path / "d", skip_bad=True)  # labels.csv names the copies
    assert first.added == 24 and first.duplicate_groups == 0
    write_with_copies(tmp_path / "d")
    second = ingest(campaign, "generic", tmp_path / "d")
    assert second.added == 3 and second.duplicates == 24
    assert (second.duplicate_groups, second.duplicate_images) == (3, 6)
    splits = _splits_by_name(campaign)
    assert all(splits[copy] == splits[orig] for copy, orig in copies.items())
    assert ingest(campaign, "generic", tmp_path / "d").added == 0
    # unlabeled copies: into the original's split, "pool" for a "train" original (same side)
    by_split = {split: name for name, split in sorted(splits.items()) if name.startswith("case")}
    with (tmp_path / "d" / "labels.csv").open("a") as fh:
        for name in by_split.values():
            Image.fromarray(noisy(np.asarray(Image.open(tmp_path / "d" / "images" / name)), 9)).save(
                tmp_path / "d" / "images" / f"u_{name}"
            )
            fh.write(f"u_{name},\n")
    third = ingest(campaign, "generic", tmp_path / "d")
    assert third.added == len(by_split) == 4 and third.duplicate_groups == 4
    splits = _splits_by_name(campaign)
    for split, name in by_split.items():
        assert splits[f"u_{name}"] == ("pool" if split == "train" else split), name


# ---- the shared BUSI copy ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (BUSI / "Dataset_BUSI_with_GT").is_dir(), reason=f"no BUSI copy at {BUSI}")
def test_busi_near_duplicates_never_straddle(tmp_path: Path) -> None:
    from medloop.data.imagestore import ImageStore

    campaign = parse_campaign({"root": str(tmp_path / "c"), "data": {"image_size": 32, "source": "busi"}})
    report = ingest(campaign, "busi", BUSI)
    assert report.added == 624 and report.duplicate_groups > 50 and report.duplicate_images > 100
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample.original_path, Sample.image_path, Sample.split).order_by(Sample.id)).all()
    ledger.close()
    splits = [split for _, _, split in rows]
    # what ingest compared: the stored images
    store = ImageStore(campaign.store)
    stored = near_duplicate_pairs([store.load_image(rel) for _, rel, _ in rows], 0.99)
    assert len(stored) > 50 and all(splits[i] == splits[j] for i, j in stored)
    # and the original files, thumbnailed directly
    originals = near_duplicate_pairs([np.asarray(Image.open(p).convert("L")) for p, _, _ in rows], 0.99)
    assert len(originals) > 50 and all(splits[i] == splits[j] for i, j in originals)
    # fractions still close to 0.7 / 0.15 / 0.15 (train incl. the pool)
    held = sum(1 for s in splits if s in ("val", "test"))
    assert abs(held - 0.3 * 624) <= 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=40), st.integers(0, 2**31))
def test_exact_copies_are_chained_in_index_order(which: list[int], seed: int) -> None:
    """Rows drawn from a few distinct thumbnails: every group of equal rows is one chain (i1, i2), (i2, i3), ...
    in index order, and nothing else pairs; a row holding NaN (never equal to itself) pairs with nothing."""
    from medloop.data.duplicates import _identical_pairs

    rng = np.random.default_rng(seed)
    distinct = rng.random((6, 16))
    distinct[5, 3] = np.nan
    rows = distinct[which] if which else np.zeros((0, 16))
    expected = []
    for k in range(5):
        members = [i for i, w in enumerate(which) if w == k]
        expected += list(zip(members[:-1], members[1:]))
    assert sorted(map(tuple, _identical_pairs(rows).tolist())) == sorted(expected)
    assert sorted(map(tuple, _identical_pairs(rows.astype(np.float32)).tolist())) == sorted(expected)  # as stored
