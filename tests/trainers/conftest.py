"""Fixtures for the trainers tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: tiny models on a shared, loaded 2-core CPU are up to 100x
    slower with intra-op threads spinning against each other. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
