"""BERT's FFN-in Linear (768 -> 3072) followed by GELU, per token count, three ways: dense (cuBLAS, then
GELU), 2:4 then GELU as its own pass, and 2:4 with GELU in the cuSPARSELt kernel's epilogue (the plan
cache: engine/plan_cache.py), in fp16 and int8 2:4; each the fastest over the kernel configs given,
as CUDA-graph replays. Prints one line per row; needs a GPU and a C compiler.

    python benchmarks/gelu_epilogue.py --alg-ids 0-15 --out gelu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import torch  # noqa: E402

from engine import kernels, plan_cache  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from engine.tuning import LinearProblem  # noqa: E402

FFN_IN = (3072, 768)


def alg_id_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def fastest(problem: LinearProblem, alg_ids: list[int], epilogue: bool, deadline: float) -> tuple[float, int] | None:
    """(ms, alg_id) of the fastest config that runs, GELU in the epilogue or after; None if none ran."""
    kernels.PLANNED_GELU = epilogue
    best = None
    for alg_id in alg_ids:
        if time.monotonic() > deadline:
            break
        try:
            ms = problem.sparse_ms(alg_id)
        except RuntimeError:  # a config this library does not offer for the problem
            continue
        best = min(best or (ms, alg_id), (ms, alg_id))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16 * 384, 64 * 384, 256 * 384])
    parser.add_argument("--alg-ids", type=alg_id_range, default=alg_id_range("0-15"), help="e.g. 0-15 or 42")
    parser.add_argument("--budget-s", type=float, default=120.0, help="stop starting configs after this long")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gelu_epilogue.py times GPU kernels: no CUDA device here")
    reason = plan_cache.enable()
    result = {"command": " ".join(sys.argv), "cusparselt": cusparselt_facts(), "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "plan_cache": reason or "on", "gelu_epilogue": plan_cache.gelu_epilogue(),
              "rows": []}
    print(f"plan cache: {result['plan_cache']}; GELU epilogue: {result['gelu_epilogue']}", flush=True)
    if reason or not kernels.PLANNED_GELU:
        sys.exit(f"gelu_epilogue.py: nothing to compare ({result['gelu_epilogue']})")
    deadline = time.monotonic() + args.budget_s
    for tokens in args.tokens:
        for precision in ("fp16", "int8"):
            problem = LinearProblem(*FFN_IN, tokens, torch.float16, precision, gelu=True)
            row = {"tokens": tokens, "precision": precision, "dense_then_gelu_ms": problem.dense_ms()}
            for name, epilogue in (("then_gelu", False), ("gelu_epilogue", True)):
                found = fastest(problem, args.alg_ids, epilogue, deadline)
                row[f"2of4_{name}_ms"], row[f"2of4_{name}_alg_id"] = found or (None, None)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                args.out.write_text(json.dumps(result, indent=2))
            del problem
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
