"""Fixtures for the round tests: a tiny synthetic campaign, ingested once per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import ingest_synthetic, tiny_campaign  # noqa: E402


@pytest.fixture
def campaign(tmp_path: Path):
    c = tiny_campaign(tmp_path / "camp")
    ingest_synthetic(c)
    return c
