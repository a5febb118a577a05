"""One call from a 2:4-pruned model directory to an accelerated one, for any caller (the accelerate stage
is one): accelerate(sparse_dir, out_dir, AccelerateOptions(...)).

On a GPU with 2:4 tensor cores and cuSPARSELt, the planner (engine/planner.py) times every 2:4 Linear's
shape against cuBLAS at the given batch sizes and keeps 2:4 per layer and batch size as `mode` says
(auto: only where it measured faster, and never slower than dense end to end). Everywhere else (no
CUDA, compute capability < 8.0, mode none) every layer is planned dense with the reason, and the call
succeeds. With precision int8, the layers whose int8 error on one calibration batch is small may run int8
2:4 too: per layer and batch size, the plan takes the fastest of dense, fp16 2:4 and int8 2:4. Plans are
made for, and applied to, the model with each layer's query, key and value fused into one Linear where
its model adapter fuses them (engine/adapters.py; the plan records the adapter's name).

out_dir gets the model's files and the plan beside them (plan.json, and the int8 layers' smoothing);
engine.plan.load_accelerated and engine.qa.QuestionAnswerer load it. Before it returns, the accelerated
outputs are checked against the masked dense model; a failed check, or any other failure, leaves
out_dir as it found it (absent or empty).

    python -m engine.accelerate my-2of4-model my-accelerated --precision int8 --calibration dev-v1.1.json
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .runtime import load_cusparselt

load_cusparselt()  # `python -m engine.accelerate` starts here: $TWOFOUR_CUSPARSELT before torch is imported

import torch  # noqa: E402

from .adapters import adapter_for, encoder_linears, gelu_pairs  # noqa: E402
from .attention import use_fused_attention  # noqa: E402
from .calibration import MAX_LAYER_ERROR, calibrate_int8, int8_layers  # noqa: E402
from .common import best_device, chosen_device  # noqa: E402
from .config import EngineConfig  # noqa: E402
from .errors import InputError  # noqa: E402
from .kernels import device_backend  # noqa: E402
from .models import check_sequence_length, load_tokenizer  # noqa: E402
from .plan import PLAN_FILE, LayerPlan, Plan, inference_model, load_accelerated  # noqa: E402
from .planner import (  # noqa: E402
    MAX_INT8_RELATIVE_ERROR,
    MAX_RELATIVE_ERROR,
    TUNING_BUDGET_S,
    check_eager_outputs,
    check_outputs,
    measure,
    why_dense,
)
from .runtime import device_record  # noqa: E402
from .tuning import random_ids  # noqa: E402

MODES = ("auto", "all", "none")
PRECISIONS = ("fp16", "int8")
DTYPES = ("float16", "bfloat16")
RANDOM_CALIBRATION_LENGTH = 128


@dataclass(frozen=True)
class AccelerateOptions:
    """What to plan for. The defaults are the pipeline's (params.yaml's accelerate and benchmark sections)."""
    mode: str = "auto"  # auto: 2:4 only where it measured faster; all: on every 2:4 layer; none: dense
    precision: str = "fp16"  # int8: int8 2:4 too, on the layers whose calibrated int8 error is small
    dtype: str = "float16"  # the model's dtype on the GPU (the fp16 2:4 matmuls run in it)
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    seq_length: int = 384
    compile: bool = True  # timed, and served, as CUDA graphs of the torch.compile'd model
    max_alg_id: int = 127  # the highest cuSPARSELt kernel config the tuner tries
    int8_smoothing: float = 0.8  # SmoothQuant's migration strength, 0..1 (0: none)
    tuning_budget_s: float = TUNING_BUDGET_S  # per precision, for timing kernel configs
    calibration_size: int = 16  # random calibration only: its batch size (RANDOM_CALIBRATION_LENGTH tokens)
    seed: int = 0  # random calibration only

    def __post_init__(self):
        for field, value, allowed in (("mode", self.mode, MODES), ("precision", self.precision, PRECISIONS),
                                      ("dtype", self.dtype, DTYPES)):
            if value not in allowed:
                raise InputError(f"AccelerateOptions.{field}={value!r}: expected one of {', '.join(allowed)}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise InputError(f"AccelerateOptions.batch_sizes={self.batch_sizes!r}: expected positive integers")
        if not 0 <= self.int8_smoothing <= 1:
            raise InputError(f"AccelerateOptions.int8_smoothing={self.int8_smoothing!r}: expected a number in [0, 1]")


@dataclass
class Calibration:
    """One batch of model inputs (input_ids, and attention_mask where it pads) the int8 check runs on,
    and what they are, for the report. Real inputs give real scales: random tokens only stand in."""
    inputs: dict[str, torch.Tensor]
    source: str


def random_calibration(options: AccelerateOptions, vocab_size: int, device: torch.device) -> Calibration:
    ids = random_ids(options.calibration_size, RANDOM_CALIBRATION_LENGTH, vocab_size, device, options.seed)
    return Calibration({"input_ids": ids}, f"{options.calibration_size} x {RANDOM_CALIBRATION_LENGTH} random tokens")


def int8_check(model, linears, calibration: Calibration, strength: float,
               unsmoothed: frozenset[str]) -> tuple[dict, dict, dict]:
    """(per-layer int8 errors, (smoothing, input scale) of the layers that pass, summary for the report)
    from the calibration batch; `unsmoothed` first tried without smoothing (calibrate_int8)."""
    device = next(model.parameters()).device
    inputs = {name: tensor.to(device) for name, tensor in calibration.inputs.items()}
    calibrated = calibrate_int8(model, linears, inputs, strength, unsmoothed)
    errors = {name: error for name, (_, _, error) in calibrated.items()}
    allowed = int8_layers(errors)
    worst = max(errors, key=errors.__getitem__)
    summary = {"calibration": calibration.source, "max_layer_error": MAX_LAYER_ERROR,
               "layers_int8_ok": sum(allowed.values()), "layers_checked": len(allowed),
               "worst_layer": worst, "worst_error": round(errors[worst], 6)}
    passed = {name: (smoothing.cpu(), scale) for name, (smoothing, scale, _) in calibrated.items() if allowed[name]}
    return {name: round(error, 6) for name, error in errors.items()}, passed, summary


@contextlib.contextmanager
def whole_or_nothing(out_dir: Path) -> Iterator[None]:
    """out_dir (absent or empty) filled by the block; on failure put back as it was."""
    created = not out_dir.exists()
    if not created and not out_dir.is_dir():
        raise InputError(f"{out_dir}: not a directory (the accelerated model gets a directory of its own)")
    if not created and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: not empty (the accelerated model gets a directory of its own)")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for item in out_dir.iterdir():
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        raise


def accelerate(sparse_dir: str | Path, out_dir: str | Path, options: AccelerateOptions = AccelerateOptions(),
               calibration: Calibration | None = None, config: EngineConfig | None = None,
               device: torch.device | None = None) -> dict:
    """The model in sparse_dir (a Hugging Face question-answering model directory, its encoder Linears 2:4
    sparse: pruning.masks makes them so) planned and checked on `device` (None: the GPU if there is one),
    written with its plan to out_dir (absent or empty). calibration None: random tokens (int8 only).
    config None: EngineConfig.from_env(), whose cuSPARSELt library must be loaded before torch
    (engine.runtime.load_cusparselt). Returns the report: the plan's summary (Plan.summary), the int8
    check, the accelerated outputs' error against the masked dense model, the device."""
    sparse_dir, out_dir = Path(sparse_dir), Path(out_dir)
    device = device or best_device()
    config = config or EngineConfig.from_env()
    with whole_or_nothing(out_dir):
        return _accelerate(sparse_dir, out_dir, options, calibration, config, device)


def _accelerate(sparse_dir: Path, out_dir: Path, options: AccelerateOptions, calibration: Calibration | None,
                config: EngineConfig, device: torch.device) -> dict:
    backend, reason = device_backend(device)
    if options.mode == "none":
        backend, reason = None, "dense: mode=none"
    dtype = getattr(torch, options.dtype) if device.type == "cuda" else torch.float32

    model = inference_model(sparse_dir, device, dtype)
    check_sequence_length(model.config, options.seq_length, "seq_length")
    if device.type == "cuda" and config.attention == "fused":
        use_fused_attention(model)
    linears = encoder_linears(model)
    blocked = {name: why for name, linear in linears.items() if (why := why_dense(linear.weight)) is not None}
    candidates = {name: linear for name, linear in linears.items() if name not in blocked}
    pairs = {first: second for first, second in gelu_pairs(model).items() if {first, second} <= candidates.keys()}

    int8_errors, int8_summary, int8_calibration = {}, None, {}
    if options.precision == "int8" and candidates:
        calibration = calibration or random_calibration(options, model.config.vocab_size, device)
        int8_errors, int8_calibration, int8_summary = int8_check(model, candidates, calibration,
                                                                 options.int8_smoothing, frozenset(pairs.values()))
        if backend is None:
            reason = f"{reason}; int8 layers emulated exactly (float64) so evaluate scores them"
    layers = {}
    for name, linear in linears.items():
        smoothing, input_scale = int8_calibration.get(name, (None, None))
        layers[name] = LayerPlan(shape=tuple(linear.weight.shape), precision="fp16" if smoothing is None else "int8",
                                 reason=reason if backend is None else blocked.get(name),
                                 input_scale=input_scale, smoothing=smoothing)
    if int8_summary is not None:  # after a GELU, calibration keeps no smoothing only where the check passes
        int8_summary["layers_unsmoothed"] = sum(layer.unsmoothed for layer in layers.values())
    plan = Plan(mode=options.mode, precision=options.precision, backend=backend, reason=reason,
                dtype=str(dtype).removeprefix("torch."), compiled=options.compile,
                batch_sizes=list(options.batch_sizes), seq_length=options.seq_length,
                layers=layers, int8_layer_error=int8_errors, device=device_record(device), gelu_pairs=pairs,
                engine=config.record(), adapter=adapter_for(model).name)
    if backend is not None and candidates:
        measure(plan, model, options.max_alg_id, options.tuning_budget_s, config)

    for item in sparse_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    plan.save(out_dir / PLAN_FILE)

    report = plan.summary()
    if int8_summary is not None:
        report["int8"] = int8_summary
    report["output_relative_error"] = None
    errors = {}
    if plan.sparse_layers():
        errors = check_outputs(model, load_accelerated(out_dir, device, dtype, config=config), plan)
    if plan.sparse_layers(eager=True):
        errors |= check_eager_outputs(model, load_accelerated(out_dir, device, dtype, eager=True, config=config), plan)
    if errors:
        report["output_relative_error"] = {key: round(err, 6) for key, err in errors.items()}
        worst = max(errors, key=errors.__getitem__)
        bound = MAX_INT8_RELATIVE_ERROR if int8_calibration else MAX_RELATIVE_ERROR
        if errors[worst] > bound:
            raise InputError(f"{sparse_dir}: accelerated outputs differ from the masked dense model at {worst}: "
                             f"relative error {errors[worst]:.2e} > {bound}; nothing kept in {out_dir}")
    report["device"] = plan.device
    return report


# --------------------------------------------------------------------------- the command line
def squad_calibration(path: Path, tokenizer, options: AccelerateOptions) -> Calibration:
    """options.calibration_size questions of a SQuAD v1.1 file (.json or .json.gz), drawn seeded, with their
    contexts, tokenized as the model reads them (question first, the context truncated to seq_length)."""
    try:
        raw = path.read_bytes()
        articles = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)["data"]
        pairs = [(qa["question"], paragraph["context"]) for article in articles
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:  # not JSON, not gzip, or not SQuAD's layout
        raise InputError(f"{path}: not a SQuAD v1.1 file ({type(err).__name__}: {err})") from None
    if not pairs:
        raise InputError(f"{path}: holds no questions")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(options.seed))
    questions, contexts = zip(*(pairs[i] for i in order[:options.calibration_size].tolist()))
    batch = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=options.seq_length,
                      padding=True, return_tensors="pt")
    return Calibration(dict(batch), f"{len(questions)} questions of {path.name}")


def main(argv: list[str] | None = None) -> int:
    defaults = AccelerateOptions()
    parser = argparse.ArgumentParser(
        prog="python -m engine.accelerate",
        description="Plan a 2:4 question-answering model directory on this GPU (per layer and batch size, the "
                    "fastest of dense, fp16 2:4 and int8 2:4 that passes its checks), check it against the masked "
                    "dense model and write it with its plan to OUT_DIR; prints the plan's summary as JSON.")
    parser.add_argument("sparse_dir", type=Path, help="a model directory whose encoder Linears are 2:4 sparse")
    parser.add_argument("out_dir", type=Path, help="where the accelerated model goes (absent or empty)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="auto: 2:4 only where it measured faster; all: on every 2:4 layer; none: dense")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--seq-length", type=int, default=defaults.seq_length)
    parser.add_argument("--no-compile", action="store_true", help="time and serve the model uncompiled")
    parser.add_argument("--tuning-budget-s", type=float, default=defaults.tuning_budget_s,
                        help="seconds of kernel config timing per precision")
    parser.add_argument("--calibration", type=Path,
                        help="a SQuAD v1.1 file (.json, .json.gz) whose questions calibrate int8 (default: random "
                             "tokens, which only stand in)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: the GPU if there is one)")
    args = parser.parse_args(argv)
    try:
        options = AccelerateOptions(mode=args.mode, precision=args.precision, batch_sizes=tuple(args.batch_sizes),
                                    seq_length=args.seq_length, compile=not args.no_compile,
                                    tuning_budget_s=args.tuning_budget_s)
        calibration = None
        if args.calibration is not None:
            calibration = squad_calibration(args.calibration, load_tokenizer(str(args.sparse_dir)), options)
        report = accelerate(args.sparse_dir, args.out_dir, options, calibration,
                            device=chosen_device(args.device))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({key: value for key, value in report.items() if key != "layers"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
