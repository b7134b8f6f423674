"""Data benchmarks: phantom generation, synthetic ingest, BUSI ingest (when the shared copy exists).

Prints JSON, then a markdown table. Run: ``.venv/bin/python bench/bench_data.py``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from medloop.config import parse_campaign
from medloop.data.ingest import ingest
from medloop.data.synthetic import generate

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    import sklearn.model_selection  # noqa: F401  (import cost is not ingest cost)

    rows = []
    for n, size in ((240, 64), (240, 128)):
        generate(8, size)  # warm-up
        s, _ = _timed(lambda n=n, size=size: generate(n, size, seed=0, class_mix=[0.2, 0.5, 0.3]))
        rows.append({"case": f"generate {n} phantoms {size}x{size}", "seconds": round(s, 3),
                     "per_image_ms": round(1000 * s / n, 2)})
    with tempfile.TemporaryDirectory() as tmp:
        c = parse_campaign({"root": f"{tmp}/syn", "data": {"n_samples": 240, "image_size": 64}})
        s, rep = _timed(lambda: ingest(c, "synthetic"))
        rows.append({"case": "ingest synthetic 240 @64", "seconds": round(s, 3),
                     "per_image_ms": round(1000 * s / 240, 2)})
        s, _ = _timed(lambda: ingest(c, "synthetic"))
        rows.append({"case": "re-ingest synthetic 240 (all duplicates)", "seconds": round(s, 3),
                     "per_image_ms": round(1000 * s / 240, 2)})
        if (BUSI / "Dataset_BUSI_with_GT").is_dir():
            c = parse_campaign({"root": f"{tmp}/busi", "data": {"image_size": 64}})
            s, rep = _timed(lambda: ingest(c, "busi", BUSI))
            rows.append({"case": f"ingest BUSI {rep.added} cases @64", "seconds": round(s, 3),
                         "per_image_ms": round(1000 * s / max(rep.added, 1), 2)})
    print(json.dumps(rows, indent=2))
    print("\n| case | seconds | ms / image |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']} | {r['per_image_ms']} |")


if __name__ == "__main__":
    main()
