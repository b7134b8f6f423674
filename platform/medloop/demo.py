"""``medloop demo``: the main job on the embedded defaults.

Ingests the campaign's dataset (synthetic phantoms by default, BUSI with ``--dataset busi``, or 3D
multimodal phantoms written as NIfTI files with ``--dataset volumes``),
then runs ``rounds`` self-training rounds end to end with the oracle annotator answering each
round's queue from the hidden ground truth (``labeling.oracle``, off by default, is turned on here
unless the campaign file sets it), and reports what changed round by round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Campaign, ComputeConfig, ModelConfig, UncertaintyConfig
from .data.ingest import IngestReport, ingest

if TYPE_CHECKING:
    from .rounds.context import Collaborators

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
    if "oracle" not in campaign.labeling.model_fields_set:  # the demo's annotator; a file's setting wins
        labeling = campaign.labeling.model_copy(update={"oracle": True})
        campaign = campaign.model_copy(update={"labeling": labeling})
        notes.append("demo: labeling.oracle = true (queued cases answered from the hidden ground truth)")
    return campaign, notes


#: ``medloop demo --dataset volumes``: phantoms (when ``data.n_samples`` is left unset) and their side
VOLUME_PHANTOMS, VOLUME_SIDE = 80, 32


def volume_demo(campaign: Campaign) -> tuple[Campaign, Path, list[str]]:
    """The volume demo's data: synthetic 3D multimodal phantoms (``medloop.data.phantoms3d``) written as a
    NIfTI folder in the campaign folder and ingested like any volume dataset; the campaign's classes become
    the phantoms' genotypes and ``volume_size`` their grid."""
    from .data.phantoms3d import GENOTYPES, REGION_NAMES, REGIONS, write_phantom_folder

    d = campaign.data
    n = d.n_samples if "n_samples" in d.model_fields_set else VOLUME_PHANTOMS
    folder = write_phantom_folder(campaign.folder / "phantoms3d", n, seed=d.seed, size=VOLUME_SIDE)
    data = d.model_copy(update={"source": "generic", "path": str(folder), "classes": list(GENOTYPES),
                                "volume_size": [VOLUME_SIDE] * 3, "no_lesion_class": None,
                                "regions": list(REGION_NAMES),
                                "region_groups": {k: list(v) for k, v in REGIONS.items()}})
    notes = [f"demo volumes: {n} synthetic phantoms of {VOLUME_SIDE}^3 voxels, four MRI sequences "
             f"(t1, t1ce, t2, flair), classes {', '.join(GENOTYPES)}, regions {', '.join(REGION_NAMES)} "
             f"(reported also as {', '.join(REGIONS)}), written to {folder}"]
    return campaign.model_copy(update={"data": data}), folder, notes


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
    extras: Collaborators | Mapping[str, object] | None = None,
    on_step: Callable[[int, str], Any] | None = None,
) -> DemoReport:
    """Ingest ``dataset`` (default: ``campaign.data.source``; idempotent), then run ``rounds`` rounds;
    ``echo`` gets each round's table, ``on_step(round, step)`` each step as it starts."""
    report, campaign = prepare_demo(campaign, dataset, path, progress)
    run_demo_rounds(campaign, report, rounds, echo=echo, extras=extras, on_step=on_step)
    return report


def prepare_demo(
    campaign: Campaign, dataset: str | None = None, path: str | Path | None = None, progress: bool = True
) -> tuple[DemoReport, Campaign]:
    """The ingest and the demo's settings: the report so far and the campaign the rounds run with."""
    fmt = dataset or campaign.data.source
    volume_notes: list[str] = []
    if fmt == "volumes":
        campaign, path, volume_notes = volume_demo(campaign)
        fmt = "generic"
    report = DemoReport(ingest(campaign, fmt, path, progress=progress))
    campaign, report.notes = demo_campaign(campaign)
    report.notes = volume_notes + report.notes
    if not campaign.labeling.enabled and not campaign.labeling.oracle:
        report.notes.append("labeling.oracle is off: queued cases stay unanswered")
    return report, campaign


def run_demo_rounds(
    campaign: Campaign,
    report: DemoReport,
    rounds: int,
    *,
    echo: Callable[[str], Any] | None = print,
    extras: Collaborators | Mapping[str, object] | None = None,
    on_step: Callable[[int, str], Any] | None = None,
) -> None:
    """Run ``rounds`` rounds (fewer when one does not finish), adding a row per round to ``report``."""
    from medloop.rounds.orchestrator import run_round

    for _ in range(rounds):
        out = run_round(campaign, force=True, extras=extras, on_step=on_step)
        if out.status != "done":
            report.notes.append(f"{out.status}: {out.message}")
            break
        report.rounds.append(round_row(campaign, out))
        if echo is not None:
            echo(round_table(report.rounds[-1:]))
