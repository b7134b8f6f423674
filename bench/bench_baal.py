"""MC-dropout scoring speed: medloop's cached + batched sampler vs baal's MC-dropout prediction.

Same model (random weights of the chosen family; speed does not depend on training), same T, same
batch. Three ways to draw T stochastic predictions of a batch:

* ``medloop cached``: ``mc_sample(model, x, T, cached=True)`` -- the deterministic prefix once, the
  dropout part on the features repeated T times (medloop.trainers.uncertainty.mc);
* ``medloop full``: ``mc_sample(..., cached=False)`` -- T full passes;
* ``baal``: ``baal.bayesian.dropout.patch_module`` + ``ModelWrapper.predict_on_batch(x, iterations=T)``
  with ``replicate_in_memory=True`` (the batch repeated T times, one forward) and, as a second row,
  ``replicate_in_memory=False`` (T forwards).

baal is **not** a medloop dependency: install it beside the benchmark only, e.g.
``pip install --target /tmp/baal-site baal`` (plus structlog<23, torchmetrics, lightning-utilities with
``--no-deps`` if the main venv must stay untouched) and pass ``--baal-site /tmp/baal-site``. When baal
cannot be imported the table says so and the medloop rows are still measured.

    .venv/bin/python bench/bench_baal.py [--baal-site /tmp/baal-site] [--model mtunet] [--size 64] \
        [--width 8] [--batch 32] [--passes 10] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def _timed_round_robin(fns: list, repeats: int, sync) -> list[list[float]]:
    """Warm each up, then time them in turn ``repeats`` times (shared-machine noise hits all alike)."""
    for fn in fns:
        fn()
        fn()
    sync()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            out[i].append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baal-site", default=None, help="folder holding baal (prepended to sys.path)")
    ap.add_argument("--model", default="mtunet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_threads(args.threads)

    import torch
    from torch import nn

    from medloop.trainers.checkpoints import build_model
    from medloop.trainers.uncertainty import mc_sample

    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    settings = C.loop_settings(args.model, size=args.size, width=args.width, epochs=1)
    model = build_model(settings.model).to(dev).eval()
    x = torch.rand(args.batch, 1, args.size, args.size, device=dev)
    T, n = args.passes, args.batch
    rows = []

    cases = [("medloop cached (mc_sample cached=True)", lambda: mc_sample(model, x, T, cached=True),
              "prefix once, dropout part batched"),
             ("medloop T full passes (cached=False)", lambda: mc_sample(model, x, T, cached=False), "")]

    baal_info: dict = {}
    if args.baal_site:
        sys.path.insert(0, args.baal_site)
    try:
        import baal
        from baal.bayesian.dropout import patch_module
        from baal.modelwrapper import ModelWrapper, TrainingArgs

        baal_info["version"] = getattr(baal, "__version__", "?")

        class JointAsTuple(nn.Module):  # baal maps over tensors / tuples; JointOutput is a dataclass
            def __init__(self, m: nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(self, inp):
                o = self.m(inp)
                return (torch.softmax(o.cls_logits.float(), 1), torch.softmax(o.seg_logits.float(), 1))

        for replicate in (True, False):
            bm = patch_module(copy.deepcopy(model))  # Dropout -> always-on MC dropout
            wrapper = ModelWrapper(JointAsTuple(bm).to(dev).eval(),
                                   TrainingArgs(use_cuda=dev.type == "cuda", replicate_in_memory=replicate,
                                                batch_size=n, criterion=nn.CrossEntropyLoss()))
            cases.append((f"baal predict_on_batch (replicate_in_memory={replicate})",
                          lambda w=wrapper: w.predict_on_batch(x, iterations=T),
                          "batch repeated T times, one forward" if replicate else "T forwards"))
    except Exception as err:  # report, keep the medloop rows
        baal_info["error"] = f"{type(err).__name__}: {err}"
        print("baal unavailable:", baal_info["error"], file=sys.stderr)

    times = _timed_round_robin([c[1] for c in cases], args.repeats, sync)
    for (name, _, note), ts in zip(cases, times):
        med = statistics.median(ts)
        rows.append({"method": name, "median_s": med, "min_s": min(ts), "images_per_s": n / med, "note": note})
        print(rows[-1], file=sys.stderr)
    cached = rows[0]["images_per_s"]
    for r in rows:
        r["cached_speedup"] = cached / r["images_per_s"]
    cfg = {"model": args.model, "size": args.size, "width": args.width, "batch": n, "passes": T,
           "repeats": args.repeats, "device": args.device, "baal": baal_info,
           "torch_threads": torch.get_num_threads()}
    md = [f"## MC-dropout sampling: medloop vs baal ({args.model}, {args.device})\n",
          f"Batch {n} of {args.size}x{args.size}, width {args.width}, T = {T}, fp32 eager, median of {args.repeats} "
          f"(methods timed in turn, after two warm-up calls each); random weights. "
          f"images/s = images fully sampled (T passes) per second. "
          f"baal: {baal_info.get('version', 'not available: ' + baal_info.get('error', 'not installed'))}.\n",
          C.md_table(rows, ["method", "median_s", "images_per_s", "cached_speedup", "note"],
                     ["method", "median s", "images/s", "medloop cached is x faster", "note"], digits=3)]
    C.write_results("bench_baal", {"config": cfg, "rows": rows}, "\n".join(md), Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
