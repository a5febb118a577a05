"""The benchmark stage on a CPU: out-of-memory records, throughput, the driver version, the 8-bit dense
models, the 2x2 matrix's factors on known numbers and what a CPU report says of the matrix."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_params

from engine.common import relative_error
from engine.fp8_epilogue import Fp8EpilogueLinear
from engine.gelu_epilogue import AppliedGelu
from engine.int8_dense import Int8DenseLinear
from engine.kernels import Fp8Linear
from engine.timing import Rounds
from engine.models import load_qa_model
from stages import accelerate, benchmark
from stages.params import validate


def test_benchmark_records_out_of_memory_and_runs_the_other_sizes(params, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    real_measure = benchmark.measure_batch

    def out_of_memory_at_batch_1(models, input_ids, *args):
        if input_ids.shape[0] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_measure(models, input_ids, *args)

    monkeypatch.setattr(benchmark, "measure_batch", out_of_memory_at_batch_1)
    metrics, rows = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["latency_ms"]["bs1"] == {"error": "out of memory"}
    assert metrics["latency_ms"]["bs2"]["dense_eager"] > 0
    assert metrics["speedup"]["bs1"] == {} and metrics["speedup"]["bs2"]["eager"] > 0
    assert {row["batch_size"] for row in rows} == {2}
    for timing, ms in metrics["latency_ms"]["bs2"].items():  # throughput beside each latency
        assert metrics["samples_per_s"]["bs2"][timing] == pytest.approx(2 * 1000 / ms, rel=1e-2)


def test_a_cpu_report_says_why_the_matrix_is_absent(params, tiny_model, tmp_path):
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["matrix"] == metrics["factors"] == metrics["matrix_gelu"] == {}
    assert metrics["matrix_absent"] == dict.fromkeys(benchmark.CELLS, "a CPU run: float32, no 8-bit or 2:4 kernels")
    assert {variant_mode.rsplit("_", 1)[0] for row in metrics["latency_ms"].values() for variant_mode in row} == {
        "dense", "accelerated"}


def test_benchmark_of_one_mode_times_only_that_mode(params, tiny_model, tmp_path):
    """benchmarks/gpu_engine.py times only "compiled" when GPU time is short (no eager model exists then)."""
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    raw = tiny_params(tiny_model)
    raw["benchmark"].update(cpu_batch_sizes=[1], compile=True)
    metrics, _ = benchmark.run(validate(raw), tiny_model, tmp_path / "accelerated", only_modes=["compiled"])
    assert set(metrics["latency_ms"]["bs1"]) == {"dense_compiled", "accelerated_compiled"}


def test_benchmark_reraises_errors_that_are_not_out_of_memory(params, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    monkeypatch.setattr(benchmark, "measure_batch", lambda *args: (_ for _ in ()).throw(RuntimeError("bad shape")))
    with pytest.raises(RuntimeError, match="bad shape"):
        benchmark.run(params, tiny_model, tmp_path / "accelerated")


def test_driver_version_read_from_the_kernel_module(monkeypatch):

    text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text)
    assert benchmark.gpu_driver_version() == "580.159.04"


def test_fp8_model_swaps_every_encoder_linear_and_keeps_the_outputs_close(tiny_model):

    model = load_qa_model(str(tiny_model)).eval()
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    converted = benchmark.fp8_model(model, {"input_ids": input_ids})
    swapped = [name for name, module in converted.named_modules() if isinstance(module, Fp8Linear)]
    assert len(swapped) == 12 and not any(isinstance(m, Fp8Linear) for m in model.modules())  # a copy
    with torch.no_grad():
        error = relative_error(model(input_ids=input_ids).start_logits, converted(input_ids=input_ids).start_logits)
    assert 0 < error < 0.1


def test_int8_dense_model_swaps_the_encoder_linears_that_pass_the_int8_check(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    converted = benchmark.int8_dense_model(model, {"input_ids": input_ids}, strength=0.8)
    swapped = [name for name, module in converted.named_modules() if isinstance(module, Int8DenseLinear)]
    assert swapped and not any(isinstance(m, Int8DenseLinear) for m in model.modules())  # a copy
    with torch.no_grad():
        error = relative_error(model(input_ids=input_ids).start_logits, converted(input_ids=input_ids).start_logits)
    assert 0 < error < 0.1


def constant_rounds(ms_by_variant: dict[str, float], rounds: int = 10) -> Rounds:
    """Rounds of two calls a turn, every call of a variant taking its given time."""
    return Rounds({variant: [[ms, ms] for _ in range(rounds)] for variant, ms in ms_by_variant.items()})


def test_factor_table_says_what_each_factor_buys_on_known_numbers():
    timings = constant_rounds({"dense": 10.0, "dense_int8": 6.0, "dense_fp8": 5.0, "accelerated_fp16": 8.0,
                               "accelerated": 4.0})
    two_four = {"fp16 2:4": ("accelerated_fp16", "accelerated_fp16_gelu"), "8-bit 2:4": ("accelerated",)}
    cells = benchmark.matrix_cells(timings, two_four)
    assert cells == {"fp16 dense": "dense", "8-bit dense": "dense_fp8", "fp16 2:4": "accelerated_fp16",
                     "8-bit 2:4": "accelerated"}  # 8-bit dense: the faster of int8 and fp8
    factors = benchmark.factor_table(timings, cells)
    assert {factor: interval["median"] for factor, interval in factors.items()} == {
        "2:4 at fp16": 1.25, "2:4 at 8-bit": 1.25, "8-bit at dense": 2.0, "8-bit at 2:4": 2.0, "2:4 and 8-bit": 2.5}
    assert all(interval["trusted"] and interval["low"] == interval["high"] for interval in factors.values())
    # an fp16 plan: no 8-bit 2:4 cell, so neither factor that needs it
    fp16_plan = constant_rounds({"dense": 10.0, "dense_int8": 6.0, "accelerated": 8.0})
    cells = benchmark.matrix_cells(fp16_plan, {"fp16 2:4": ("accelerated", "accelerated_gelu")})
    assert cells == {"fp16 dense": "dense", "8-bit dense": "dense_int8", "fp16 2:4": "accelerated"}
    factors = benchmark.factor_table(fp16_plan, cells)
    assert factors["2:4 at 8-bit"] is None and factors["8-bit at 2:4"] is None and factors["2:4 and 8-bit"] is None
    assert factors["2:4 at fp16"]["median"] == 1.25 and factors["8-bit at dense"]["median"] == round(10 / 6, 3)
    # fp16 dense: the faster of the model as it comes and the one with the GELU epilogue
    epilogue = constant_rounds({"dense": 10.0, "dense_gelu": 9.0, "dense_fp8": 6.0, "accelerated_fp16": 8.0,
                                "accelerated_fp16_gelu": 7.5, "accelerated": 4.5})
    cells = benchmark.matrix_cells(epilogue, two_four)
    assert cells["fp16 dense"] == "dense_gelu" and cells["fp16 2:4"] == "accelerated_fp16_gelu"
    factors = benchmark.factor_table(epilogue, cells)
    assert factors["2:4 and 8-bit"]["median"] == 2.0 and factors["2:4 at fp16"]["median"] == 1.2
    slower = constant_rounds({"dense": 10.0, "dense_gelu": 11.0})
    assert benchmark.matrix_cells(slower, {}) == {"fp16 dense": "dense"}


def test_a_batch_sizes_tables_hold_latency_throughput_speedup_and_the_matrix():
    timings = {"compiled": constant_rounds({"dense": 10.0, "dense_int8": 6.0, "accelerated": 8.0}),
               "eager": constant_rounds({"dense": 20.0, "accelerated": 25.0}, rounds=3)}
    tables = benchmark.batch_tables(timings, 16, {"fp16 2:4": ("accelerated",)})
    assert tables["latency_ms"] == {"dense_compiled": 10.0, "dense_int8_compiled": 6.0, "accelerated_compiled": 8.0,
                                    "dense_eager": 20.0, "accelerated_eager": 25.0}
    assert tables["samples_per_s"]["dense_compiled"] == 1600.0 and tables["samples_per_s"]["accelerated_eager"] == 640.0
    assert tables["speedup"] == {"compiled": 1.25, "eager": 0.8}
    assert tables["speedup_range"] == {"compiled": [1.25, 1.25], "eager": [0.8, 0.8]}
    assert tables["speedup_interval"]["compiled"]["trusted"] and not tables["speedup_interval"]["eager"]["trusted"]
    assert tables["matrix"] == {"fp16 dense": {"variant": "dense", "ms": 10.0, "samples_per_s": 1600.0},
                                "8-bit dense": {"variant": "dense_int8", "ms": 6.0, "samples_per_s": 2666.7},
                                "fp16 2:4": {"variant": "accelerated", "ms": 8.0, "samples_per_s": 2000.0}}
    assert set(tables["factors"]) == set(benchmark.FACTORS)
    assert "gpu_clocks" not in tables and "peak_memory_mb" not in tables  # none on a CPU


def test_the_fp8_epilogue_variant_joins_where_it_agrees_and_not_where_it_leaves_gelu_out(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    calibration = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 16),
                                              generator=torch.Generator().manual_seed(0))}
    fp8 = benchmark.fp8_model(model, calibration)
    models, absent = {}, {}
    benchmark.add_epilogue_variant("dense_fp8_epilogue", fp8, benchmark.fp8_epilogue_model, calibration,
                                   models, absent)
    assert list(models) == ["dense_fp8_epilogue"] and absent == {}

    def gelu_left_out(model):  # the GELU after each producer a pass-through, and none in its epilogue either
        converted = benchmark.fp8_epilogue_model(model)
        for module in converted.modules():
            if isinstance(module, Fp8EpilogueLinear):
                module.gelu = False
        return converted

    benchmark.add_epilogue_variant("no_gelu", fp8, gelu_left_out, calibration, models, absent)
    assert absent["no_gelu"].startswith("its outputs differ by") and "no_gelu" not in models


def test_a_gelu_epilogue_variant_joins_the_matrix_only_where_it_runs_and_agrees(tiny_model, monkeypatch):
    model = load_qa_model(str(tiny_model)).eval()
    calibration = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 16),
                                              generator=torch.Generator().manual_seed(0))}
    models, absent = {}, {}
    benchmark.add_gelu_epilogue("dense", model, calibration, models, absent)
    assert list(models) == ["dense_gelu"] and absent == {}

    class Refusing(torch.nn.Module):  # what a library refusing the epilogue looks like from here
        def __init__(self):
            super().__init__()
            self.act = AppliedGelu()

        def forward(self, **inputs):
            raise RuntimeError("cuSPARSELt plan: CUSPARSE_STATUS_NOT_SUPPORTED (status 10)\nmore lines")

    monkeypatch.setattr(benchmark, "gelu_epilogue_model", lambda model: Refusing())
    benchmark.add_gelu_epilogue("accelerated_fp16", model, calibration, models, absent)
    assert absent == {"accelerated_fp16_gelu": "RuntimeError: cuSPARSELt plan: CUSPARSE_STATUS_NOT_SUPPORTED (status 10)"}
    monkeypatch.setattr(benchmark, "gelu_epilogue_model", lambda model: copy.deepcopy(model))  # nothing took it
    benchmark.add_gelu_epilogue("accelerated", model, calibration, models, absent)
    assert absent["accelerated_gelu"].startswith("no Linear before a GELU can take the epilogue")
    assert list(models) == ["dense_gelu"]
