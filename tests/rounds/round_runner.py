"""Run one round of a campaign in a separate process (used by the crash/resume and lock tests).

    python round_runner.py CONFIG [--tiny] [--checkpoint] [--no-tracking] [--hold FILE]

``--tiny`` uses the small deterministic train/score stand-ins from support.py (``--checkpoint``: the
train stand-in saves a real tiny model, which the report step registers in MLflow); ``--hold FILE``
makes the sync step wait until FILE exists (so a test can observe the lock being held).
The crash itself is caused by MEDLOOP_TEST_CRASH_AT=<step>:<before|after-commit>: the
orchestrator sends SIGKILL to its own process at that point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support import TINY, checkpoint_train_round  # noqa: E402

from medloop.config import load_campaign  # noqa: E402
from medloop.rounds.lock import RoundLocked  # noqa: E402
from medloop.rounds.orchestrator import run_round  # noqa: E402
from medloop.rounds.steps import sync_step  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--no-tracking", action="store_true")
    ap.add_argument("--hold")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    extras = dict(TINY) if args.tiny else {}
    if args.no_tracking:
        extras["tracking"] = False
    if args.tiny and not args.checkpoint:
        extras["log_model"] = False
    if args.checkpoint:
        extras["train_round"] = checkpoint_train_round([0.9, 0.8, 0.7])
    steps = None
    if args.hold:
        hold = Path(args.hold)

        def held_sync(ctx):  # noqa: ANN001, ANN202
            (hold.parent / "holding").write_text("1")
            while not hold.exists():
                time.sleep(0.1)
            return sync_step(ctx)

        steps = {"sync": held_sync}
    try:
        out = run_round(load_campaign(args.config), force=args.force, steps=steps, extras=extras)
    except RoundLocked as err:
        print(err, file=sys.stderr)
        return 3
    print(out.status, out.round_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
