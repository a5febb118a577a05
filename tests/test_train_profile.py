"""benchmarks/train_profile.py: the pipeline's training on synthetic windows, timed and profiled."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import yaml
from torch.autograd import DeviceType

from conftest import REPO, tiny_params

sys.path.insert(0, str(REPO / "benchmarks"))
from train_profile import kernel_table, profile_run, section_for, synthetic_features  # noqa: E402
from stages.params import validate  # noqa: E402


def test_synthetic_windows_have_their_length_and_answers_inside():
    features = synthetic_features(6, 32, vocab_size=1200, seed=1)
    assert len(features) == 6
    for row in features:
        assert len(row["input_ids"]) == len(row["attention_mask"]) == 32
        assert all(1000 <= token < 1200 for token in row["input_ids"])
        assert 1 <= row["start_positions"] <= row["end_positions"] < 32
    assert synthetic_features(6, 32, 1200, seed=1)["input_ids"] == features["input_ids"]


def test_the_section_is_the_params_one_with_the_steps_and_precision_asked(tiny_model):
    params = validate(tiny_params(tiny_model))
    section = section_for(params, "finetune", steps=7, precision="fp32")
    assert section["max_steps"] == 7 and section["precision"] == "fp32"
    assert section["distill"] == params["finetune.distill"] and section["batch_size"] == params["finetune.batch_size"]
    assert section_for(params, "finetune", 7, None)["precision"] == params["finetune.precision"]
    assert section_for(params, "finetune", 7, None)["compile"] is params["finetune.compile"] is False
    assert section_for(params, "finetune", 7, None, compile_model=True)["compile"] is True


def test_a_cpu_run_reports_the_wall_time_per_step_and_the_busiest_ops(tiny_model, tmp_path):
    raw = tiny_params(tiny_model)
    raw["finetune"].update(batch_size=4, distill=True, distill_hidden=1.0)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, "benchmarks/train_profile.py", "--model", str(tiny_model), "--params",
                    str(params_file), "--steps", "3", "--profile-steps", "2", "--length", "32", "--precision",
                    "fp32", "--json", str(out)], cwd=REPO, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["section"] == "finetune" and report["batch_size"] == 4
    assert report["compiled"] is False
    assert "distillation" in report["objective"] and report["steps_timed"] == 3
    assert report["wall_ms_per_step"] > 0 and report["kernel_ms_per_step"] is None
    cpu_times = [op["cpu_ms_per_step"] for op in report["top_ops"]]
    assert cpu_times and cpu_times == sorted(cpu_times, reverse=True)


def event(key, device_type, device_us, cpu_us, count, is_user_annotation=False):
    return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=device_us,
                           self_cpu_time_total=cpu_us, count=count, is_user_annotation=is_user_annotation)


def test_the_gpu_time_counts_each_kernel_once_not_again_under_its_op():
    """The profiler gives an op (aten::addmm) the device time of the kernels it launched, and lists
    the kernels too: summing both would count the GEMMs twice (a kernel share above 100%). The
    scheduled profiler's ProfilerStep annotation has a device-side twin spanning each step's kernels
    and gaps: counted, it would add more than the kernels themselves."""
    events = [event("ProfilerStep*", DeviceType.CUDA, 12000, 0, 2, is_user_annotation=True),
              event("aten::addmm", DeviceType.CPU, 9000, 400, 20), event("gemm_kernel", DeviceType.CUDA, 9000, 0, 20),
              event("aten::softmax", DeviceType.CPU, 1000, 100, 10), event("softmax_kernel", DeviceType.CUDA, 1000, 0, 10),
              event("Memcpy HtoD", DeviceType.CUDA, 500, 0, 4)]
    profile = SimpleNamespace(key_averages=lambda: events)
    device_ms, rows = kernel_table(profile, steps=2, on_gpu=True)
    assert device_ms == (9000 + 1000 + 500) / 1000 / 2
    assert [row["op"] for row in rows] == ["gemm_kernel", "softmax_kernel", "Memcpy HtoD"]
    assert rows[0] == {"op": "gemm_kernel", "device_ms_per_step": 4.5, "calls_per_step": 10.0, "cpu_ms_per_step": 0.0}
    cpu_ms, cpu_rows = kernel_table(profile, steps=2, on_gpu=False)
    assert cpu_ms == 0 and [row["op"] for row in cpu_rows][:2] == ["aten::addmm", "aten::softmax"]


def test_the_profile_holds_the_steps_past_warm_up_alone(tiny_model):
    """The profiled run trains 3 + 2 steps; the profile's window holds the last 2 (one optimizer step
    each), not the model's loading or the first steps."""
    params = validate(tiny_params(tiny_model))
    section = {**section_for(params, "finetune", steps=2, precision="fp32"), "batch_size": 2}
    profile = profile_run(str(tiny_model), section, steps=2, length=16, seed=0, on_gpu=False, skipped=3)
    counts = {event.key: event.count for event in profile.key_averages()}
    optimizer_steps = [count for key, count in counts.items() if key.startswith("Optimizer.step#")]
    assert optimizer_steps == [2]
