"""train: fit the joint model on human + pseudo labels, warm-started from the last round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medloop.ledger.queries import training_composition

from .. import state
from ..context import StepContext
from ._util import jsonable


class WarmStartUnreadable(RuntimeError):
    """The previous round's checkpoint cannot be read; the message names the file and the ways out."""


def check_warm_start(campaign: Any, round_id: int, prev_round: int, checkpoint: str) -> None:
    """Read the previous round's checkpoint before training starts, so that a truncated or missing file
    stops the round with its name and the remedies (not a torch zip error from inside a Ray worker).
    A checkpoint given as a URI is read by the trainer itself; a single file (the test stand-ins'
    checkpoints) is left to the trainer that wrote it."""
    from medloop.trainers.checkpoints import CheckpointError, load_state

    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return
    path = Path(checkpoint.removeprefix("file://"))
    if path.is_file():
        return
    try:
        if not path.exists():
            raise CheckpointError(f"{path}: the checkpoint folder is missing")
        load_state(path)
    except CheckpointError as err:
        raise WarmStartUnreadable(
            f"round {round_id} cannot warm-start from round {prev_round}'s checkpoint: {err}. "
            f"Train round {round_id} from the model's initialisation with `medloop round --cold-start`, "
            f"or put round {prev_round}'s checkpoint back from its registered MLflow model with "
            f"`medloop round --restore-checkpoint`"
        ) from None


def train_step(ctx: StepContext) -> dict[str, Any]:
    train_round = ctx.collaborators.trainer()
    with ctx.ledger.reading() as s:
        prev = state.previous_done_round(s, ctx.round_id)
        warm = prev.checkpoint_path if prev is not None else None
        trained_on = training_composition(s, semi=ctx.campaign.training.semi != "none")
    cold = ctx.cold_start
    if cold:
        warm = None
    elif warm is not None and prev is not None:
        check_warm_start(ctx.campaign, ctx.round_id, prev.id, warm)
    result = train_round(ctx.campaign, ctx.ledger, round_id=ctx.round_id, warm_start=warm)
    detail = {
        "checkpoint_path": str(result.checkpoint_path),
        "model_version": result.model_version,
        "best_metrics": jsonable(result.best_metrics),
        "history": jsonable(result.history),
        "global_step": int(getattr(result, "global_step", 0) or 0),
        "warm_start": warm,
        "cold_start": cold,
        "trained_on": trained_on,
    }
    with ctx.ledger.transaction() as s:
        rnd = ctx.round(s)
        rnd.checkpoint_path, rnd.model_version = str(result.checkpoint_path), result.model_version
        ctx.complete(s, detail)
    return detail
