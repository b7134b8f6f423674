"""Dashboard fixtures: one campaign for the whole session (a real 2-round run when possible)."""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from campaign_fixture import build_campaign, build_empty_campaign  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def _real_campaign(folder: Path) -> Path | None:
    """A campaign made by two real rounds of the orchestrator, or None (with a warning) when unavailable."""
    from real_run import run_two_rounds

    try:
        return run_two_rounds(folder)
    except Exception as err:  # noqa: BLE001 - reported, then the hand-filled campaign is used
        warnings.warn(f"dashboard tests: real 2-round run unavailable ({type(err).__name__}: {err}); "
                      "using the hand-filled campaign", stacklevel=1)
        return None


@pytest.fixture(scope="session")
def campaign_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The campaign the dashboard tests look at. MEDLOOP_DASHBOARD_FIXTURE=hand skips the real run."""
    if os.environ.get("MEDLOOP_DASHBOARD_FIXTURE", "real") != "hand":
        cfg = _real_campaign(tmp_path_factory.mktemp("real-campaign"))
        if cfg is not None:
            return cfg
    return build_campaign(tmp_path_factory.mktemp("hand-campaign"))


@pytest.fixture(scope="session")
def hand_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-filled campaign (exact numbers known)."""
    return build_campaign(tmp_path_factory.mktemp("hand-campaign2"))


@pytest.fixture()
def empty_config(tmp_path: Path) -> Path:
    return build_empty_campaign(tmp_path / "empty")


def file_fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
