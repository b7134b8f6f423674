"""The store's ``.npy`` reader: what ``np.load`` returns, with each distinct header parsed once."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloop.data.imagestore import ImageStore, read_npy


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["float32", "float16", "uint8", "bool", ">i4", "float64"]),
       st.lists(st.integers(0, 7), min_size=0, max_size=4), st.booleans())
def test_read_npy_equals_np_load(tmp_path_factory, dtype, shape, fortran):
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    a = (np.arange(int(np.prod(shape)), dtype=np.float64) % 5).astype(dtype).reshape(shape)
    np.save(path, np.asfortranarray(a) if fortran else a)
    got, want = read_npy(path), np.load(path)
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert got.flags.writeable


def test_other_versions_go_to_np_load(tmp_path: Path):
    path = tmp_path / "v2.npy"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    assert np.array_equal(read_npy(path), a)


def test_truncated_array_names_the_file(tmp_path: Path):
    store = ImageStore(tmp_path / "store")
    rel = store.put_array("umap/round-1/case-7", np.ones((64, 64), np.float32))
    full = store.path(rel).read_bytes()
    store.path(rel).write_bytes(full[:-100])
    with pytest.raises(ValueError, match=r"case-7\.npy: truncated array file, 4071 of 4096 values"):
        store.load_array(rel)
