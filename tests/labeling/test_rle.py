"""Brush RLE and annotation parsing: pure functions, no server."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush

from medloop.labeling.pull import BadAnnotation, parse_annotation
from medloop.labeling.rle import RLEError, encode_rle, mask_to_rle, rle_to_mask

CLASSES = ["normal", "benign", "malignant"]


def test_mask_round_trip_various_shapes():
    rng = np.random.default_rng(1)
    for h, w in [(64, 64), (37, 81), (1, 5)]:
        m = (rng.random((h, w)) > 0.6).astype(np.uint8)
        assert np.array_equal(rle_to_mask(mask_to_rle(m), h, w), m)


@st.composite
def _masks(draw):
    """Masks of every kind an encoder can trip on: empty, full, speckled, blocks, one row or column."""
    h, w = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["empty", "full", "speckle", "block"]))
    m = np.zeros((h, w), np.uint8)
    if kind == "full":
        m[:] = 1
    elif kind == "speckle":
        m = (rng.random((h, w)) < draw(st.floats(0.05, 0.95))).astype(np.uint8)
    elif kind == "block":
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1)] = 1
    return m


@settings(max_examples=150, deadline=None)
@given(_masks())
def test_mask_rle_is_label_studios_own_encoding(mask):
    """Byte for byte what the Label Studio SDK's encoder writes (the format its editor decodes)."""
    assert mask_to_rle(mask) == [int(v) for v in brush.mask2rle(mask * 255)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 255)), min_size=1, max_size=40))
def test_encode_rle_matches_the_sdk_for_any_runs(runs):
    """Any run lengths (1: a single value; 2-8, 9-16, 17-256, longer: the four size classes) and values."""
    arr = np.concatenate([np.full(n, v, np.uint8) for n, v in runs])
    assert encode_rle(arr) == [int(v) for v in brush.encode_rle(arr)]


def test_runs_longer_than_one_record():
    """A run over 2^16 values is split into records of 2^16 and the rest (a 256x256 mask is 262,144 values)."""
    for n in (65536, 65537, 131072, 131073, 300000):
        arr = np.zeros(n + 10, np.uint8)
        arr[5:5 + n] = 255
        assert encode_rle(arr) == [int(v) for v in brush.encode_rle(arr)], n
    full = np.ones((256, 256), np.uint8)
    assert np.array_equal(rle_to_mask(mask_to_rle(full), 256, 256), full)


def test_rle_header():
    """The first 53 bits: the value count (4 per pixel), word size - 1 = 7, run-size classes 3/4/8/16 - 1."""
    bits = np.unpackbits(np.array(mask_to_rle(np.zeros((3, 5), np.uint8)), np.uint8))
    field = lambda a, b: int("".join(map(str, bits[a:b])), 2)  # noqa: E731
    assert field(0, 32) == 60 and field(32, 37) == 7
    assert [field(37 + 4 * i, 41 + 4 * i) for i in range(4)] == [2, 3, 7, 15]


def test_wrong_size_is_refused():
    rle = mask_to_rle(np.ones((32, 32), np.uint8))
    with pytest.raises(RLEError, match="1024 pixels"):
        rle_to_mask(rle, 64, 64)


def _brush(mask, w=None, h=None):
    return {"type": "brushlabels", "from_name": "lesion", "to_name": "image",
            "original_width": w or mask.shape[1], "original_height": h or mask.shape[0],
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Lesion"]}}


def _cls(*names):
    return {"type": "choices", "from_name": "class", "to_name": "image", "value": {"choices": list(names)}}


def test_parse_good_and_bad():
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 3:9] = 1
    name, mask = parse_annotation({"result": [_cls("benign"), _brush(m)]}, CLASSES, 16, 16)
    assert name == "benign" and np.array_equal(mask, m)
    with pytest.raises(BadAnnotation, match="no class"):
        parse_annotation({"result": [_brush(m)]}, CLASSES, 16, 16)
    with pytest.raises(BadAnnotation, match="2 classes"):
        parse_annotation({"result": [_cls("benign", "normal")]}, CLASSES, 16, 16)
    with pytest.raises(BadAnnotation, match="unknown class 'cyst'"):
        parse_annotation({"result": [_cls("cyst")]}, CLASSES, 16, 16)
    with pytest.raises(BadAnnotation, match="8x8"):
        parse_annotation({"result": [_cls("benign"), _brush(np.ones((8, 8), np.uint8))]}, CLASSES, 16, 16)
    # lying about the size in original_width/height: the RLE itself is checked
    with pytest.raises(BadAnnotation, match="pixels"):
        parse_annotation({"result": [_cls("benign"), _brush(np.ones((8, 8), np.uint8), 16, 16)]}, CLASSES, 16, 16)


def test_brush_label_must_be_the_lesion_label():
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 3:9] = 1

    def brush(labels):
        r = _brush(m)
        r["value"]["brushlabels"] = labels
        return r

    with pytest.raises(BadAnnotation, match=r"brush region None labelled 'Cyst'; expected 'Lesion' \(labeling"):
        parse_annotation({"result": [_cls("benign"), brush(["Cyst"])]}, CLASSES, 16, 16)
    with pytest.raises(BadAnnotation, match="labelled 'Lesion', 'Cyst'"):
        parse_annotation({"result": [_cls("benign"), brush(["Lesion", "Cyst"])]}, CLASSES, 16, 16)
    with pytest.raises(BadAnnotation, match="has no label; expected 'Lesion'"):
        parse_annotation({"result": [_cls("benign"), brush([])]}, CLASSES, 16, 16)
    # the campaign's own name for the lesion (labeling.lesion_label)
    with pytest.raises(BadAnnotation, match="labelled 'Lesion'; expected 'Nodule'"):
        parse_annotation({"result": [_cls("benign"), brush(["Lesion"])]}, CLASSES, 16, 16, "Nodule")
    name, mask = parse_annotation({"result": [_cls("benign"), brush(["Nodule"])]}, CLASSES, 16, 16, "Nodule")
    assert name == "benign" and np.array_equal(mask, m)
