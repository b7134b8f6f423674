"""MC-dropout sampling (Gal & Ghahramani; Cheng et al., MTTU-Net, IEEE TMI 2022 uses T = 10 passes).

Only dropout modules are stochastic while sampling; BatchNorm and every other module stay
in eval mode. The cached sampler exploits the model contract ``forward(x) ==
decode_rest(decode_prefix(encode(x)))`` (:mod:`medloop.trainers.models.base`): the deterministic
prefix (the encoder, and the decoder levels before the first active dropout where the model
splits its decoder) runs once, its output is repeated T times along the batch dimension and
``decode_rest`` runs on all T copies in one batch (optionally in chunks of at most
``max_batch`` rows). Each repeated row draws its own dropout mask, so the samples have the same
distribution as T full forward passes.

Caching saves the prefix's T - 1 repeats but runs the rest on a T times larger batch. With
dropout on every decoder level that rest is most of the network, and on a CPU it can be slower
than T plain passes (memory-bound; bench/README.md measured 0.68x for a width-8 U-Net at 64 px);
with dropout only on the last decoder level ("last_decoder") the rest is one dropout, a 1x1
convolution and the classifier. ``cached="auto"`` times both on a slice of the first batch
(:func:`probe_cached`) and keeps the faster one for that model, input shape and T.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from medloop.trainers.heads import check_head, dirichlet_alpha, probs_from_logits

if TYPE_CHECKING:
    from medloop.trainers.models.base import JointModel


def is_dropout(module: nn.Module) -> bool:
    """True for every torch dropout module (Dropout, Dropout1d/2d/3d, AlphaDropout, ...)."""
    return isinstance(module, _DropoutNd)


@contextmanager
def eval_mode(model: nn.Module, *, dropout_on: bool = False) -> Iterator[nn.Module]:
    """Every module in eval mode (dropout modules in train mode when ``dropout_on``); the
    previous mode of every module is restored after."""
    previous = {m: m.training for m in model.modules()}
    model.eval()
    if dropout_on:
        for m in model.modules():
            if is_dropout(m):
                m.train()
    try:
        yield model
    finally:
        for m, mode in previous.items():
            m.training = mode


def enable_mc_dropout(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Eval mode with only the dropout modules stochastic (BatchNorm frozen); restored after.

    Dropout must be implemented with ``nn.Dropout*`` modules (functional dropout keyed to
    ``self.training`` of a non-dropout module stays off).
    """
    return eval_mode(model, dropout_on=True)


def map_tensors(features: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor in a tensor / tuple / list / dict structure."""
    if isinstance(features, torch.Tensor):
        return fn(features)
    if isinstance(features, dict):
        return {k: map_tensors(v, fn) for k, v in features.items()}
    if isinstance(features, tuple):
        return tuple(map_tensors(v, fn) for v in features)
    if isinstance(features, list):
        return [map_tensors(v, fn) for v in features]
    return features


def repeat_batch(features: Any, times: int) -> Any:
    """Repeat every tensor ``times`` along dim 0 (row ``t * B + b`` is copy t of sample b)."""
    return map_tensors(features, lambda t: t.repeat(times, *([1] * (t.dim() - 1))))


@dataclass
class MCSamples:
    """T stochastic predictions for a batch of B images.

    cls_probs (T, B, K), seg_probs (T, B, Q, H, W); cls_alpha / seg_alpha hold the Dirichlet
    parameters when the head is evidential (else None); embedding (B, D) is the mean over
    passes (None when the model gives none).
    """

    cls_probs: torch.Tensor
    seg_probs: torch.Tensor
    cls_alpha: torch.Tensor | None
    seg_alpha: torch.Tensor | None
    embedding: torch.Tensor | None


def _heads(cls_logits: torch.Tensor, seg_logits: torch.Tensor, cls_head: str, seg_head: str):
    cls_alpha = dirichlet_alpha(cls_logits) if cls_head == "evidential" else None
    seg_alpha = dirichlet_alpha(seg_logits) if seg_head == "evidential" else None
    return (
        probs_from_logits(cls_logits, cls_head),
        probs_from_logits(seg_logits, seg_head),
        cls_alpha,
        seg_alpha,
    )


def _stack(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts, dim=0)  # type: ignore[arg-type]


#: attribute on a model holding its probe decisions: (input shape without the batch, T, device) -> cached?
PROBE_ATTRIBUTE = "_medloop_mc_cached"


@torch.no_grad()
def probe_cached(
    model: nn.Module, x: torch.Tensor, passes: int, *, rows: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> bool:
    """Whether encode-once + a T-times batch through ``decode`` beats T full passes on this model and
    input: both timed on the first ``rows`` images (each after a warm-up call), the faster wins; the
    decision is kept on the model per (input shape, T, device), so the probe runs once per scorer."""
    key = (tuple(x.shape[1:]), int(passes), str(x.device))
    decided: dict[tuple[Any, ...], bool] = model.__dict__.setdefault(PROBE_ATTRIBUTE, {})
    if key in decided:
        return decided[key]
    if passes < 2 or not (hasattr(model, "encode") and hasattr(model, "decode")):
        decided[key] = False
        return False
    part = x[:rows]
    seconds = {}
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # the caller's
        for cached in (True, False):  # dropout masks stay what they would have been without the probe
            mc_sample(model, part, passes, cached=cached)  # warm-up (allocator, lazy init)
            t0 = clock()
            mc_sample(model, part, passes, cached=cached)
            seconds[cached] = clock() - t0
    decided[key] = seconds[True] <= seconds[False]
    return decided[key]


@torch.no_grad()
def mc_sample(
    model: nn.Module,
    x: torch.Tensor,
    passes: int = 10,
    cached: bool | Literal["auto"] = True,
    cls_head: str = "softmax",
    seg_head: str = "softmax",
    max_batch: int | None = None,
    stochastic: bool = True,
) -> MCSamples:
    """Draw ``passes`` MC-dropout predictions of ``model`` on ``x`` (B, C, H, W).

    cached=True: ``encode`` (+ ``decode_prefix``) once, the rest on the features repeated along the batch
    (chunks of at most ``max_batch`` rows, whole passes per chunk); cached=False: T full
    ``model(x)`` passes; ``"auto"``: the faster of the two for this model (:func:`probe_cached`).
    Heads map logits to probabilities (``medloop.trainers.heads``).
    ``stochastic=False`` runs with every module in eval mode (dropout off), e.g. one
    deterministic pass for the evidential method.
    """
    check_head(cls_head)
    check_head(seg_head)
    if passes < 1:
        raise ValueError("passes must be >= 1")
    from medloop.trainers.windowed import SlidingWindow

    if isinstance(model, SlidingWindow):  # a patch model over a whole volume: sampled patch by patch
        return model.sample(x, passes, cached=cached, cls_head=cls_head, seg_head=seg_head, stochastic=stochastic)
    if cached == "auto":
        cached = stochastic and probe_cached(model, x, passes)
    elif cached and not (hasattr(model, "encode") and hasattr(model, "decode")):
        cached = False  # a model without the encode / decode split: full passes
    b = x.shape[0]
    cls_p, seg_p, cls_a, seg_a, emb = [], [], [], [], []
    with eval_mode(model, dropout_on=stochastic):
        if cached:
            joint = cast("JointModel", model)  # encode / decode_prefix / decode_rest: a JointModel (unwrapped)
            features = joint.decode_prefix(joint.encode(x))
            per_chunk = passes if max_batch is None else max(1, max_batch // max(b, 1))
            done = 0
            while done < passes:
                t = min(per_chunk, passes - done)
                out = joint.decode_rest(repeat_batch(features, t))
                cp, sp, ca, sa = _heads(out.cls_logits, out.seg_logits, cls_head, seg_head)
                cls_p.append(cp.reshape(t, b, *cp.shape[1:]))
                seg_p.append(sp.reshape(t, b, *sp.shape[1:]))
                cls_a.append(None if ca is None else ca.reshape(t, b, *ca.shape[1:]))
                seg_a.append(None if sa is None else sa.reshape(t, b, *sa.shape[1:]))
                if out.embedding is not None:
                    emb.append(out.embedding.reshape(t, b, -1))
                done += t
        else:
            for _ in range(passes):
                out = model(x)
                cp, sp, ca, sa = _heads(out.cls_logits, out.seg_logits, cls_head, seg_head)
                cls_p.append(cp[None])
                seg_p.append(sp[None])
                cls_a.append(None if ca is None else ca[None])
                seg_a.append(None if sa is None else sa[None])
                if out.embedding is not None:
                    emb.append(out.embedding.reshape(1, b, -1))
    return MCSamples(
        cls_probs=torch.cat(cls_p, 0),
        seg_probs=torch.cat(seg_p, 0),
        cls_alpha=_stack(cls_a),
        seg_alpha=_stack(seg_a),
        embedding=torch.cat(emb, 0).mean(0) if emb else None,
    )
