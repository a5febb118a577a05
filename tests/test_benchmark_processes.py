"""The benchmark in several processes on the CPU: the batch sizes dealt out to two torchrun ranks give
the report one process writes, plus who measured what; a failing rank fails the stage in one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_params
from flows.common import run_stage
from stages import accelerate, benchmark
from stages.params import ParamError, validate
from stages.summary import headline_speedup

# CPU runs: with a GPU, `auto` is a GPU process each and two processes need two GPUs.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU runs")
BATCH_SIZES = [1, 2, 4]  # rank 0: 1 and 4, rank 1: 2


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    accelerated = tmp_path_factory.mktemp("benchmark-processes") / "accelerated"
    accelerated.mkdir()
    accelerate.run(validate(tiny_params(tiny_model)), tiny_model, accelerated)
    return tiny_model, accelerated


def params_with(tiny_model, num_processes):
    raw = tiny_params(tiny_model)
    raw["benchmark"].update(cpu_batch_sizes=BATCH_SIZES, num_processes=num_processes)
    return validate(raw)


def share_failing_on_rank_1(params, *args):
    """measure_share, but rank 1 fails (pickled by name: the ranks import this module)."""
    if os.environ["RANK"] == "1":
        raise ValueError("injected failure\nsecond line")
    benchmark.measure_share(params, *args)


def test_two_processes_report_what_one_does_and_who_measured_each_batch_size(models, tiny_model, monkeypatch):
    launches = []
    with monkeypatch.context() as patch:
        patch.setattr(benchmark, "run_in_processes", lambda *args, **kwargs: launches.append(args))
        one = benchmark.benchmark(params_with(tiny_model, "auto"), *models)
    two = benchmark.benchmark(params_with(tiny_model, 2), *models)
    assert launches == [] and one["processes"] == 1 and two["processes"] == 2
    assert list(two) == list(one) + ["device_index"]
    batch_keys = ["bs1", "bs2", "bs4"]
    assert two["device_index"] == {"bs1": 0, "bs2": 1, "bs4": 0}
    for report in (one, two):
        assert list(report["latency_ms"]) == list(report["speedup"]) == list(report["noise"]["spread"]) == batch_keys
    assert {key: set(row) for key, row in two["latency_ms"].items()} == \
           {key: set(row) for key, row in one["latency_ms"].items()}
    assert two["trustworthy"] == (not two["noise"]["untrustworthy"] and not two["noise"]["untrusted_figures"])


def test_a_failing_rank_fails_the_stage_in_one_line_and_writes_no_report(models, tiny_model, monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark, "measure_share", share_failing_on_rank_1)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.chdir(tmp_path)
    work = lambda params, out: benchmark.benchmark(params, *models)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"^rank 1: ValueError: injected failure$"):
        run_stage("benchmark", work, params_with(tiny_model, 2), None, ())
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("value", [0, -1, "many"])
def test_num_processes_is_auto_or_a_whole_number(tiny_model, value):
    raw = tiny_params(tiny_model)
    raw["benchmark"]["num_processes"] = value
    with pytest.raises(ParamError, match=rf"field 'benchmark\.num_processes' = {value!r} is invalid \(expected str or "
                                         r"int, auto \(one per visible GPU, 1 on the CPU\) or a whole number >= 1\)$"):
        validate(raw)


def partial_report(latency: dict, spread: dict, device: str) -> dict:
    """A rank's report of its share, as `run` writes it on a GPU (the fields merging reads)."""
    speedup = {key: {"compiled": row["dense_compiled"] / row["accelerated_compiled"]} for key, row in latency.items()}
    interval = {key: {"compiled": {"median": row["compiled"], "low": row["compiled"], "high": row["compiled"],
                                   "rounds": 10, "trusted": True}} for key, row in speedup.items()}
    factors = {key: {"2:4 at fp16": row["compiled"]} for key, row in interval.items()}
    return {"seq_length": 384, "latency_ms": latency, "speedup": speedup,
            "samples_per_s": {key: {"dense_compiled": 1.0} for key in latency}, "speedup_interval": interval,
            "speedup_range": {key: {"compiled": [0.9, 1.1]} for key in latency},
            "matrix": {key: {"fp16 dense": {"variant": "dense"}} for key in latency}, "factors": factors,
            "gpu_clocks": {key: {"compiled": {"sm_mhz": [1980.0, 1980.0]}} for key in latency},
            "peak_memory_mb": {key: 10.0 for key in latency},
            **benchmark.noise_check(spread, benchmark.figures(interval, factors)), "device": {"gpu": device}}


def test_merging_orders_every_table_by_batch_size_and_checks_noise_over_all_ranks():
    fast, slow = {"dense_compiled": 2.0, "accelerated_compiled": 1.0}, {"dense_compiled": 3.0, "accelerated_compiled": 2.0}
    quiet, noisy = {"dense_compiled": 0.01, "accelerated_compiled": 0.01}, {"dense_compiled": 0.5, "accelerated_compiled": 0.01}
    rank0 = partial_report({"bs4": slow, "bs64": fast}, {"bs4": quiet, "bs64": quiet}, "H200 #0")
    rank1 = partial_report({"bs16": fast, "bs256": fast}, {"bs16": quiet, "bs256": noisy}, "H200 #1")
    report = benchmark.merged([rank0, rank1], [4, 16, 64, 256])
    order = ["bs4", "bs16", "bs64", "bs256"]
    for table in benchmark.PER_BATCH_SIZE + ("device_index",):
        assert list(report[table]) == order, table
    assert report["device_index"] == {"bs4": 0, "bs16": 1, "bs64": 0, "bs256": 1}
    assert report["device"] == {"gpu": "H200 #0"} and report["processes"] == 2
    assert list(report["noise"]["untrustworthy"]) == ["bs256"] and report["trustworthy"] is False
    assert headline_speedup(report) == {"batch_size": 64, "mode": "compiled", "speedup": 2.0}
    json.dumps(report)  # the report file's content
