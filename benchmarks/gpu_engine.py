"""The GPU targets of the 2:4 engine, measured through the pipeline's own accelerate and benchmark stages.

Builds a bert-base-cased-shaped QA model from a BertConfig (hidden 768, 12 layers, 12 heads,
intermediate 3072; random weights, no hub access) with a small character-level tokenizer (for
benchmarks/engine_qa_latency.py), applies 2:4 magnitude masks to its encoder Linears (all but those
matching --exclude, as prune.exclude), runs stages.accelerate.run on it, then stages.benchmark.run
(dense = the same model unmasked), and prints the plan, the latency table, the speedups and the
tutorial's single-Linear microbenchmark. Run from the repository root on a GPU:

    python benchmarks/gpu_engine.py --out gpu-results.json            # params.yaml's benchmark sizes
    python benchmarks/gpu_engine.py --repeats 50 --no-compile --mode all
    python benchmarks/gpu_engine.py --precision int8 --out gpu-results-int8.json   # dense / fp16 / int8 2:4 mix
    python benchmarks/gpu_engine.py --precision int8 --exclude 'pooler|attention'   # 2:4 in the FFNs only
    TWOFOUR_CUSPARSELT=/path/to/libcusparseLt.so.0 python benchmarks/gpu_engine.py ...   # another cuSPARSELt

With --work DIR the models stay in DIR (dense/, sparse/, accelerated/) for the stream and QA
benchmarks, and --only accelerate / --only benchmark runs one stage there (benchmark needs the
accelerate output), so a time-limited run (benchmarks/engine_gpu_run.sh) keeps what finished.
"""
from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from engine.plan import PLAN_FILE  # noqa: E402
from engine.planner import TUNING_BUDGET_S  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from stages import accelerate, benchmark  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.prune import prunable_linears  # noqa: E402

BERT_BASE_CASED = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive weights along the input dimension."""
    groups = weight.abs().reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def save_tokenizer(directory: Path) -> None:
    """A WordPiece tokenizer of single characters (ids far below the model's vocabulary), so that
    question answering runs without the hub: it times the model, its answers mean nothing."""
    from transformers import BertTokenizer

    symbols = string.ascii_letters + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *symbols, *(f"##{c}" for c in symbols)]
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=False).save_pretrained(directory)


def build_models(root: Path, exclude: str) -> tuple[Path, Path]:
    """(dense_dir, sparse_dir): the random bert-base-shaped model, unmasked and 2:4-masked but for the
    Linears matching `exclude`, each with the tokenizer; made once per `root`."""
    from transformers import BertConfig, BertForQuestionAnswering

    dense_dir, sparse_dir = root / "dense", root / "sparse"
    if (sparse_dir / "config.json").exists():
        return dense_dir, sparse_dir
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    model.save_pretrained(dense_dir)
    with torch.no_grad():
        for linear in prunable_linears(model, exclude).values():
            linear.weight.mul_(two_four_mask(linear.weight))
    model.save_pretrained(sparse_dir)
    for directory in (dense_dir, sparse_dir):
        save_tokenizer(directory)
    return dense_dir, sparse_dir


def print_plan(plan_metrics: dict, plan: dict) -> None:
    print(f"\n== accelerate: kernel timing ==\n{json.dumps(plan['tuning'])}")
    for note in plan["kernel_timing_notes"]:
        print(f"  {note}")
    print("\n== accelerate: whole model per batch size and variant (ms, CUDA graphs, timed interleaved) ==")
    for batch, by_variant in plan["model_ms"].items():
        print(f"{batch:>6}  " + "  ".join(f"{variant} {ms:.3f}" for variant, ms in by_variant.items()))
    for batch, by_variant in plan["eager_model_ms"].items():
        print(f"{batch:>6}  eager: " + "  ".join(f"{variant} {ms:.3f}" for variant, ms in by_variant.items()))
    for batch, row in plan_metrics.get("by_batch", {}).items():
        print(f"{batch:>6}  variant={row['variant']:<10} 2:4 layers={row['layers_2of4']:>3} "
              f"(int8 {row['layers_int8']:>3})  dense_masked {row['model_dense_masked_ms']:8.3f} ms  "
              f"accelerated {row['model_accelerated_ms']:8.3f} ms  x{row['model_speedup']:.3f}")
    for batch, row in plan_metrics.get("eager_by_batch", {}).items():
        timed = f"dense_masked {row['model_dense_masked_ms']:8.3f} ms  eager {row['model_accelerated_ms']:8.3f} ms  " \
                f"x{row['model_speedup']:.3f}" if "model_speedup" in row else "(not timed eagerly)"
        print(f"{batch:>6}  eager: variant={row['variant']:<10} (int8 {row['layers_int8']:>3})  {timed}")
    print(f"output check (relative error): {plan_metrics['output_relative_error']}")
    first_layer = {name: row for name, row in plan_metrics.get("layers", {}).items() if ".layer.0." in name}
    print("\n== accelerate: layer 0's Linears (GPU time per call, best 2:4 config vs cuBLAS) ==")
    for name, per_batch in first_layer.items():
        if "reason" in per_batch:  # never timed: left dense (--exclude, or a shape cuSPARSELt cannot take)
            cells = per_batch["reason"]
        else:
            cells = "  ".join(f"{b}: x{r['speedup']} {'2:4' if r['kernel'] != 'dense' else 'dense'}"
                              for b, r in per_batch.items())
        print(f"{name.split('layer.0.')[1]:<28} {cells}")


def print_benchmark(bench: dict) -> None:
    print(f"\n== benchmark: latency (ms, median of {bench['repeats']} in {bench['rounds']} interleaved rounds), "
          f"seq {bench['seq_length']}, {bench['dtype']} ==")
    print("(speedup_<mode>: dense / accelerated, the median of the rounds' ratios)")
    print(benchmark.latency_frame(bench).to_string())
    print("\n== benchmark: throughput (samples/s) ==")
    print(pd.DataFrame.from_dict(bench["samples_per_s"], orient="index").to_string())
    print("\n== benchmark: what each factor buys (compiled; median [95% interval]) ==")
    for batch, factors in bench["factors"].items():
        print(f"{batch:>6}  " + "  ".join(f"{factor} {benchmark.interval_text(interval)}"
                                          for factor, interval in factors.items()))
    for absent, why in bench["matrix_absent"].items():
        print(f"absent: {absent}: {why}")
    t = bench.get("tutorial_linear", {})
    if "error" in t:
        print(f"\n== tutorial Linear {t['shape']} ==\n{t['error']}: {t['kernel_timing_notes']}")
    elif t:
        print(f"\n== tutorial Linear {t['shape']} ==\n"
              f"GPU time: dense {t['dense_ms']} ms, 2:4 {t['sparse_ms']} ms (alg_id {t['alg_id']}), x{t['speedup']}\n"
              f"eager: dense {t['eager_dense_ms']} ms, 2:4 {t['eager_sparse_ms']} ms, "
              f"torch subclass {t['eager_torch_subclass_ms']} ms; {t['search']}")
    print(f"\ndevice: {json.dumps(bench['device'])}")


def work_parser(description: str) -> argparse.ArgumentParser:
    """The command line of a benchmark run on the models --work keeps (dense/, accelerated/): --work, --out."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="holds dense/ and accelerated/ (gpu_engine.py --work)")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    return parser


def merge_benchmark(merged: dict, metrics: dict) -> None:
    """Fold one batch size's benchmark metrics into those of the sizes before it (in place)."""
    for key, value in metrics.items():
        if isinstance(value, dict) and all(str(k).startswith("bs") for k in value):  # keyed by batch size
            merged.setdefault(key, {}).update(value)
        elif key == "noise":
            for part in ("spread", "untrustworthy", "untrusted_figures"):
                merged.setdefault(key, {"limit": value["limit"], "interval_limit": value["interval_limit"]}
                                  ).setdefault(part, {}).update(value[part])
        else:
            merged[key] = value
    merged["trustworthy"] = not merged["noise"]["untrustworthy"] and not merged["noise"]["untrusted_figures"]


# What every result of this script is: timings of a shape, not of a trained model (gpu/ times one).
SHAPE_BENCHMARK = ("a shape benchmark, not a model result: random bert-base-shaped weights, 2:4 by magnitude, "
                   "int8 calibrated on random tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--mode", choices=["auto", "all", "none"], default="auto")
    parser.add_argument("--precision", choices=["fp16", "int8"], default="fp16",
                        help="int8: per layer and batch size the fastest of dense, fp16 2:4 and int8 2:4 "
                             "(int8 where the layer's int8 check passes)")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--seq-length", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--max-alg-id", type=int, help="the highest cuSPARSELt config probed and timed")
    parser.add_argument("--tuning-budget-s", type=float, default=TUNING_BUDGET_S,
                        help=f"seconds of kernel-config timing per precision (default {TUNING_BUDGET_S:.0f})")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--benchmark-modes", nargs="+", choices=["eager", "compiled", "graphed"],
                        help="time only these benchmark modes (default: all that apply)")
    parser.add_argument("--no-tutorial", action="store_true", help="skip the tutorial's Linear")
    parser.add_argument("--exclude", help="regex of encoder Linears left dense (default: params.yaml's prune.exclude)")
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temporary directory)")
    parser.add_argument("--only", choices=["accelerate", "benchmark"], help="run one stage on the models in --work")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_engine.py measures GPU targets: no CUDA device here")
    if args.only and not args.work:
        sys.exit("gpu_engine.py: --only needs --work (the directory holding the models)")

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["accelerate"]["mode"] = args.mode
    params["accelerate"]["precision"] = args.precision
    if args.max_alg_id is not None:
        params["accelerate"]["max_alg_id"] = args.max_alg_id
    for key, value in (("batch_sizes", args.batch_sizes), ("seq_length", args.seq_length),
                       ("warmup", args.warmup), ("repeats", args.repeats)):
        if value is not None:
            params["benchmark"][key] = value
    params["benchmark"]["compile"] = params["benchmark"]["compile"] and not args.no_compile

    facts = cusparselt_facts()
    print(f"cuSPARSELt {facts['cusparselt']} loaded ({', '.join(facts['cusparselt_files'])}; "
          f"torch compiled against {facts['cusparselt_torch_compiled']})", flush=True)
    results = {"command": " ".join(sys.argv), "cusparselt": facts, "stage_seconds": {}, "model": SHAPE_BENCHMARK}

    def save() -> None:  # after each stage, so a run cut short still leaves its figures
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        exclude = params["prune"]["exclude"] if args.exclude is None else args.exclude
        dense_dir, sparse_dir = build_models(root, exclude)
        accelerated_dir = root / "accelerated"
        if args.only != "benchmark":
            shutil.rmtree(accelerated_dir, ignore_errors=True)  # planned again: a plan of an earlier run gives way
            start = time.perf_counter()
            results["accelerate"] = accelerate.run(params, sparse_dir, accelerated_dir,
                                                   tuning_budget_s=args.tuning_budget_s)
            results["stage_seconds"]["accelerate"] = time.perf_counter() - start
            results["plan"] = json.loads((accelerated_dir / PLAN_FILE).read_text())
            save()
            print_plan(results["accelerate"], results["plan"])
        if args.only != "accelerate":
            start = time.perf_counter()
            results["benchmark"], results["rows"] = {}, []
            batch_sizes = params["benchmark"]["batch_sizes"]
            for batch in batch_sizes:  # one at a time, saved after each: a run cut short keeps the sizes done
                params["benchmark"]["batch_sizes"] = [batch]
                metrics, rows = benchmark.run(params, dense_dir, accelerated_dir, args.benchmark_modes,
                                              tutorial=not args.no_tutorial and batch == batch_sizes[-1])
                merge_benchmark(results["benchmark"], metrics)
                results["rows"] += rows
                results["stage_seconds"]["benchmark"] = time.perf_counter() - start
                save()
            print_benchmark(results["benchmark"])
    print(f"({SHAPE_BENCHMARK})")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["stage_seconds"].items()))


if __name__ == "__main__":
    main()
