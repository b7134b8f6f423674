"""Fixtures for the Label Studio tests: ``make_queue`` builds a queue (``labeling_queue.build_queue``) in a
campaign of the session's Label Studio server."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).parent))  # labeling_queue, for the tests here and bench/bench_ls_push.py

from labeling_queue import Queue, build_queue  # noqa: E402

_counter = itertools.count()


@pytest.fixture
def make_queue(labelstudio_server):
    def make(n: int = 6, **kw) -> Queue:
        name = f"lab{next(_counter)}-{np.random.default_rng().integers(1 << 30)}"
        overrides = kw.pop("overrides", {})
        campaign = labelstudio_server.campaign(name, **overrides)
        return build_queue(campaign, n, **kw)

    return make
