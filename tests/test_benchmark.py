"""The benchmark stage on a CPU: out-of-memory records, speedups, the driver version, the fp8 comparison model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_params

from engine.common import relative_error
from engine.kernels import Fp8Linear
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


def test_speedups_compare_dense_with_accelerated_and_ignore_the_fp8_row():
    latency = {"bs4": {"dense_compiled": 2.0, "accelerated_compiled": 1.0, "dense_fp8_compiled": 1.5,
                       "dense_eager": 3.0, "accelerated_eager": 3.0}}
    assert benchmark.speedups(latency) == {"bs4": {"compiled": 2.0, "eager": 1.0}}
