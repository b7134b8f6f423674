"""Slow: ingest the shared BUSI copy (skipped cleanly when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medloop.config import parse_campaign
from medloop.data.ingest import ingest
from medloop.ledger import Ledger
from medloop.ledger.queries import class_counts

BUSI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "busi"


@pytest.mark.slow
@pytest.mark.skipif(not (BUSI / "Dataset_BUSI_with_GT").is_dir(), reason=f"no BUSI copy at {BUSI}")
def test_ingest_shared_busi(tmp_path: Path) -> None:
    campaign = parse_campaign({"root": str(tmp_path / "c"), "data": {"image_size": 32, "source": "busi"}})
    report = ingest(campaign, "busi", BUSI)
    assert report.bad == [] and report.added == 624
    assert report.classes == {"benign": 350, "malignant": 168, "normal": 106}
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        assert class_counts(s, "truth") == {"benign": 350, "malignant": 168, "normal": 106}
    ledger.close()
    assert ingest(campaign, "busi", BUSI).added == 0
