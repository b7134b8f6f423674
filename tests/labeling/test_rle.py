"""Brush RLE and annotation parsing: pure functions, no server."""

import numpy as np
import pytest

from medloop.labeling.pull import BadAnnotation, parse_annotation
from medloop.labeling.rle import RLEError, mask_to_rle, rle_to_mask

CLASSES = ["normal", "benign", "malignant"]


def test_mask_round_trip_various_shapes():
    rng = np.random.default_rng(1)
    for h, w in [(64, 64), (37, 81), (1, 5)]:
        m = (rng.random((h, w)) > 0.6).astype(np.uint8)
        assert np.array_equal(rle_to_mask(mask_to_rle(m), h, w), m)


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
