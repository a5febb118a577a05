"""What the loaded cuSPARSELt offers on this GPU, for one bert-base FFN Linear (768 -> 3072) at batch
16 x seq 384: its version (asked of the library), how many kernel configs it has for fp16 and int8 2:4,
whether its own search works, and the fastest config found within a short time budget, against cuBLAS.
A quick way to compare cuSPARSELt versions (run it with and without TWOFOUR_CUSPARSELT).

    python benchmarks/cusparselt_probe.py --out probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import torch  # noqa: E402

from engine.runtime import cusparselt_facts  # noqa: E402
from engine.tuning import best_alg, tune_linears  # noqa: E402

FFN_IN = (3072, 768, 16 * 384)  # (out_features, in_features, tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    parser.add_argument("--budget-s", type=float, default=10.0, help="config timing per precision (seconds)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("cusparselt_probe.py asks the GPU: no CUDA device here")
    result = {"command": " ".join(sys.argv), "cusparselt": cusparselt_facts(), "problem": FFN_IN}
    for precision in ("fp16", "int8"):
        timings, notes = tune_linears([FFN_IN], torch.float16, precision=precision, budget_s=args.budget_s)
        timing = timings[FFN_IN]
        best = best_alg(timing)
        result[precision] = {
            "alg_ids_offered": timing["alg_ids_offered"], "search": timing["search"], "notes": notes,
            "dense_ms": timing["dense_ms"], "best_alg_id": best,
            "best_ms": None if best is None else timing["sparse_ms"][best],
            "speedup": None if best is None else round(timing["dense_ms"] / timing["sparse_ms"][best], 3),
            "configs_timed": len(timing["sparse_ms"])}
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        print(f"{precision}: {json.dumps(result[precision])}", flush=True)


if __name__ == "__main__":
    main()
