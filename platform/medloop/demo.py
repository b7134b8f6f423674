"""``medloop demo``: the main job on the embedded defaults.

For now it ingests the campaign's dataset (synthetic phantoms by default) and returns the
ingest report; the round orchestrator extends :func:`run_demo` to run rounds after it.
"""

from __future__ import annotations

from pathlib import Path

from .config import Campaign
from .data.ingest import IngestReport, ingest


def run_demo(campaign: Campaign, dataset: str | None = None, path: str | Path | None = None, progress: bool = True) -> IngestReport:
    """Ingest ``dataset`` (default: ``campaign.data.source``) into the campaign; idempotent."""
    fmt = dataset or campaign.data.source
    return ingest(campaign, fmt, path if path is not None else campaign.data.path, progress=progress)
