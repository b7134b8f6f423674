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


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 200_000))
def test_read_file_returns_the_whole_file(tmp_path_factory, size):
    """``read_file`` (export) and ``read_source`` (ingest) read with ``os`` calls and stop at the size ``fstat``
    gave: every byte of files from empty to several read chunks long."""
    from medloop.data.imagestore import read_file
    from medloop.data.records import read_source

    path = tmp_path_factory.mktemp("files") / "f.png"
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert read_file(str(path)) == data
    source, stat = read_source(path)
    assert source.read() == data and stat is not None and stat.size == size


def test_read_fd_stops_at_the_size_and_reads_a_sizeless_file_to_its_end(tmp_path: Path):
    """The size from ``fstat`` bounds the read (a file that grew since is read as it was); size 0 (a file
    whose size the filesystem does not report, as under /proc) is read to its end; a file that ends sooner
    gives what it holds."""
    import os

    from medloop.data.imagestore import read_fd

    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_fd(fd, 70_000) == b"x" * 70_000
        assert read_fd(fd, 0) == b"x" * 30_000  # the rest, to the end
        assert read_fd(fd, 10) == b""
    finally:
        os.close(fd)


def test_threads_writing_the_same_file_each_rename_a_whole_file_of_their_own(tmp_path: Path) -> None:
    """Every pushed task without a map points at one placeholder image, and ingest writes from a thread: the
    store's atomic write uses a temporary name per process and thread, so concurrent writers of one path never
    rename each other's temporary (FileNotFoundError) or leave half a file."""
    from concurrent.futures import ThreadPoolExecutor

    store = ImageStore(tmp_path)
    contents = [bytes([i]) * (4096 + i) for i in range(8)]

    def write(i: int) -> None:
        for _ in range(40):
            store.put_bytes("images/uncertainty/none.png", contents[i])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # raises what any writer raised
    assert store.path("images/uncertainty/none.png").read_bytes() in contents
    assert sorted(p.name for p in store.path("images/uncertainty").iterdir()) == ["none.png"]  # no temporary left
