"""``medloop demo``: the main job on the embedded defaults.

Ingests the campaign's dataset (synthetic phantoms by default, or BUSI with ``--dataset busi``),
then runs ``rounds`` self-training rounds end to end with the oracle annotator answering each
round's queue from the hidden ground truth, and reports what changed round by round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Campaign, ComputeConfig, ModelConfig, UncertaintyConfig
from .data.ingest import IngestReport, ingest

#: settings used when the campaign leaves compute / model / uncertainty at their defaults, so that
#: 3 rounds fit in minutes on 2 CPU cores
DEMO_PROFILE = {
    "compute": {"epochs": 8, "num_workers": 1, "batch_size": 16},
    "model": {"width": 8},
    "uncertainty": {"mc_passes": 5},
}


@dataclass
class DemoReport:
    """The ingest report plus one row per round."""

    ingest: IngestReport
    rounds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [self.ingest.summary(), *self.notes]
        if self.rounds:
            lines += ["", "round by round:", round_table(self.rounds)]
        return "\n".join(lines)


def demo_campaign(campaign: Campaign) -> tuple[Campaign, list[str]]:
    """Apply :data:`DEMO_PROFILE` to the sections the campaign leaves at their defaults."""
    defaults = {"compute": ComputeConfig(), "model": ModelConfig(), "uncertainty": UncertaintyConfig()}
    notes: list[str] = []
    for section, default in defaults.items():
        current = getattr(campaign, section)
        if current == default:
            campaign = campaign.model_copy(update={section: current.model_copy(update=DEMO_PROFILE[section])})
            notes.append(f"demo profile: {section} " + ", ".join(f"{k}={v}" for k, v in DEMO_PROFILE[section].items()))
    return campaign, notes


def round_row(campaign: Campaign, outcome: Any) -> dict[str, Any]:
    """What one round changed, read back from the ledger."""
    from medloop.ledger import Ledger, Round

    led = Ledger.open(campaign.ledger)
    try:
        with led.reading() as s:
            rnd = s.get_one(Round, outcome.round_id)
            m, notes = dict(rnd.metrics or {}), dict(rnd.notes or {})
    finally:
        led.close()
    sel, pools = notes.get("selection") or {}, notes.get("pools") or {}
    return {
        "round": outcome.round_id, "status": outcome.status, "human": pools.get("human_labels"),
        "pseudo": sel.get("pseudo_labels"), "queued": sel.get("queue_size"), "audit": sel.get("audit_size"),
        "pool_open": pools.get("pool_open"), "accuracy": m.get("accuracy"), "dice": m.get("dice"),
        "ece": m.get("ece"), "seg_ece": m.get("seg_ece"), "pseudo_precision": m.get("pseudo_precision_truth"),
        "pseudo_mask_dice": m.get("pseudo_mask_dice_truth"),
        "gate": "open" if sel.get("gate_open") else "closed",
        "mask_gate": "open" if sel.get("seg_gate_open") else "closed",
    }


def round_table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        changes = [f"{k} {fmt(first[k])} -> {fmt(last[k])}" for k in ("human", "accuracy", "dice", "ece")
                   if first.get(k) is not None and last.get(k) is not None]
        out.append("changed: " + "; ".join(changes))
    return "\n".join(out)


def run_demo(
    campaign: Campaign,
    dataset: str | None = None,
    path: str | Path | None = None,
    progress: bool = True,
    rounds: int = 3,
    echo: Callable[[str], Any] | None = print,
    extras: dict[str, Any] | None = None,
) -> DemoReport:
    """Ingest ``dataset`` (default: ``campaign.data.source``; idempotent), then run ``rounds`` rounds."""
    from medloop.rounds.orchestrator import run_round

    fmt = dataset or campaign.data.source
    report = DemoReport(ingest(campaign, fmt, path if path is not None else campaign.data.path, progress=progress))
    campaign, report.notes = demo_campaign(campaign)
    if not campaign.labeling.enabled and not campaign.labeling.oracle:
        report.notes.append("labeling.oracle is off: queued cases stay unanswered")
    for _ in range(rounds):
        out = run_round(campaign, force=True, extras=extras)
        if out.status != "done":
            report.notes.append(f"{out.status}: {out.message}")
            break
        report.rounds.append(round_row(campaign, out))
        if echo is not None:
            echo(round_table(report.rounds[-1:]))
    return report
