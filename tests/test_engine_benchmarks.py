"""The GPU run's benchmark scripts on a CPU: the variable-shape stream (benchmarks/engine_stream.py),
question-answering latency (benchmarks/engine_qa_latency.py) and the tokenizer gpu_engine.py gives its
model, on a tiny model and a dense plan (what accelerate makes without a GPU)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import eager_host_cost  # noqa: E402
import engine_profile  # noqa: E402
import engine_qa_latency  # noqa: E402
import engine_stream  # noqa: E402
from engine.kernels import SparseLinear  # noqa: E402
from stages import accelerate  # noqa: E402


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory):
    """gpu_engine.py --work's layout: dense/ and accelerated/ (with its plan)."""
    from conftest import tiny_params
    from stages.params import validate

    root = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_model, root / "dense")
    (root / "accelerated").mkdir()
    accelerate.run(validate(tiny_params(tiny_model)), tiny_model, root / "accelerated")
    return root


def test_requests_are_seeded_and_inside_their_ranges():
    shapes = engine_stream.requests(200, seed=3, max_batch=256, min_seq=64, max_seq=384)
    assert shapes == engine_stream.requests(200, seed=3) and shapes != engine_stream.requests(200, seed=4)
    assert all(1 <= batch <= 256 and 64 <= seq <= 384 for batch, seq in shapes)
    assert min(b for b, _ in shapes) < 32 and max(b for b, _ in shapes) > 224  # the range is used


def test_the_stream_pads_to_buckets_without_changing_outputs_and_reports_the_speedup(work, tmp_path):
    # dense/ (unpruned in a GPU run) must not be what the engine's outputs are checked against: the
    # accelerated model's own weights are. Here dense/ holds other weights, so checking against it fails.
    from safetensors.torch import load_file, save_file

    work = shutil.copytree(work, tmp_path / "work")
    weights = load_file(str(work / "dense" / "model.safetensors"))
    save_file({name: tensor * 1.5 for name, tensor in weights.items()}, str(work / "dense" / "model.safetensors"))
    out = tmp_path / "stream.json"
    engine_stream.main(["--work", str(work), "--out", str(out), "--requests", "5", "--seed", "1", "--passes", "2",
                        "--max-batch", "5", "--min-seq", "8", "--max-seq", "30", "--batch-buckets", "2", "4",
                        "--seq-buckets", "16", "32", "--no-compile"])
    result = json.loads(out.read_text())
    shapes = [tuple(shape) for shape in result["request_shapes"]]
    assert shapes == engine_stream.requests(5, 1, 5, 8, 30)
    assert result["tokens"] == sum(batch * seq for batch, seq in shapes)
    assert len(result["seconds"]["dense"]) == len(result["seconds"]["accelerated"]) == 2  # a pass of each per round
    assert result["speedup"] == result["speedup_interval"]["median"] > 0  # the rounds' median ratio
    assert result["speedup_interval"]["rounds"] == 2 and not result["speedup_interval"]["trusted"]  # 2 rounds
    assert len(result["relative_error"]) == engine_stream.CHECKED_REQUESTS
    for errors in result["relative_error"].values():
        assert errors["padding"] < 1e-5  # padded and masked: the unpadded model's logits
        assert errors["accelerated_vs_dense"] < 1e-5  # a dense plan on a CPU: the same model
    assert result["within_bound"] and result["relative_error_bound"] == 2e-3  # no int8 layer on a dense plan


def test_qa_latency_times_both_answerers_on_the_same_questions(work, tmp_path):
    out = tmp_path / "qa.json"
    engine_qa_latency.main(["--work", str(work), "--out", str(out), "--questions", "2", "--repeats", "2"])
    result = json.loads(out.read_text())
    assert len(result["questions"]) == 2
    for name in ("accelerated", "dense"):
        assert len(result[name]["median_ms"]) == 2 and result[name]["all_questions_in_one_call_ms"] > 0
    assert result["accelerated"]["answers"] == result["dense"]["answers"]  # a dense plan answers as its model


def test_gpu_engine_gives_its_model_a_tokenizer_that_needs_no_hub(tmp_path):
    from gpu_engine import save_tokenizer
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoded = tokenizer("Where was Ada born?", "Ada was born in London, 1815.")["input_ids"]
    assert tokenizer.unk_token_id not in encoded and max(encoded) < 200  # ids inside any BERT vocabulary
    assert tokenizer.decode(encoded, skip_special_tokens=True).replace(" ", "").replace("#", "") == \
        "WherewasAdaborn?AdawasborninLondon,1815."


def test_benchmark_metrics_of_one_batch_size_at_a_time_fold_into_one():
    from gpu_engine import merge_benchmark

    def one(batch, spread, unsure=False):
        key = f"bs{batch}"
        return {"seq_length": 384, "latency_ms": {key: {"dense_compiled": 2.0 * batch}}, "speedup": {key: {"compiled": 1.1}},
                "noise": {"limit": 0.2, "spread": {key: {"dense_compiled": spread}},
                          "untrustworthy": {key: {"dense_compiled": "spread"}} if spread > 0.2 else {},
                          "interval_limit": 0.03,
                          "untrusted_figures": {key: {"speedup compiled": "x"}} if unsure else {}},
                "factors": {key: {"2:4 at fp16": None}}, "device": {"gpu": "H200"},
                "trustworthy": spread <= 0.2 and not unsure}

    merged = {}
    merge_benchmark(merged, one(16, 0.01))
    assert merged["trustworthy"]
    unsure = {}
    merge_benchmark(unsure, one(16, 0.01, unsure=True))
    assert not unsure["trustworthy"] and unsure["noise"]["untrusted_figures"] == {"bs16": {"speedup compiled": "x"}}
    merge_benchmark(merged, one(64, 0.5))
    assert merged["latency_ms"] == {"bs16": {"dense_compiled": 32.0}, "bs64": {"dense_compiled": 128.0}}
    assert merged["factors"] == {"bs16": {"2:4 at fp16": None}, "bs64": {"2:4 at fp16": None}}
    assert merged["device"] == {"gpu": "H200"}
    assert merged["noise"]["spread"] == {"bs16": {"dense_compiled": 0.01}, "bs64": {"dense_compiled": 0.5}}
    assert not merged["trustworthy"] and list(merged["noise"]["untrustworthy"]) == ["bs64"]


def test_the_summary_sets_each_figure_beside_its_target_and_survives_missing_steps(tmp_path):
    import engine_gpu_summary

    def interval(median, low, high, trusted=True):
        return {"median": median, "low": low, "high": high, "rounds": 10, "trusted": trusted}

    (tmp_path / "accelerate.json").write_text(json.dumps({"plan": {
        "model_ms": {"16": {"dense_masked": 2.6, "per_layer": 2.5, "fp16_2of4": 2.0, "int8_fused": 2.2, "int8_gelu": 2.0}},
        "variants": {"16": "fp16_2of4"},
        "tuning": {"alg_ids_offered": {"fp16": 60}}}}))
    (tmp_path / "benchmark.json").write_text(json.dumps({"benchmark": {
        "speedup_interval": {"bs16": {"compiled": interval(1.5, 1.48, 1.52), "eager": interval(0.9, 0.7, 1.1, False)},
                             "bs64": {"compiled": interval(1.8, 1.79, 1.81)}},
        "factors": {"bs16": {"2:4 and 8-bit": interval(1.46, 1.45, 1.47)},
                    "bs64": {"2:4 at 8-bit": interval(1.31, 1.3, 1.32), "2:4 at fp16": None,
                             "2:4 and 8-bit": interval(1.8, 1.79, 1.81)}},
        "matrix": {"bs64": {"fp16 dense": {"variant": "dense", "ms": 11.0}}},
        "matrix_absent": {"8-bit dense": None}}}))
    (tmp_path / "stream.json").write_text("{not json")  # a step killed while writing
    engine_gpu_summary.main([str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    bs16, bs64 = summary["by_batch"]["bs16"], summary["by_batch"]["bs64"]
    assert bs16["variant"] == "fp16_2of4" and bs16["planner_vs_masked_fp16"] == 1.3 and bs16["planner_epilogue"] == 1.1
    # the speedup target is against fp16 dense at its fastest (the matrix), not the model as it comes
    assert bs16["figures"]["2:4 and 8-bit"] == {"median": 1.46, "low": 1.45, "high": 1.47, "trusted": True,
                                                "target": 1.45, "meets_target": True}
    assert bs16["figures"]["speedup compiled"] == {"median": 1.5, "low": 1.48, "high": 1.52, "trusted": True,
                                                   "target": None, "meets_target": None}
    # an untrusted interval never counts as meeting (or missing) a target
    assert bs16["figures"]["speedup eager"]["target"] == 1.0 and bs16["figures"]["speedup eager"]["meets_target"] is None
    assert bs64["figures"]["2:4 and 8-bit"]["meets_target"] is False  # 1.8 < 2.00
    assert bs64["figures"]["2:4 at 8-bit"]["meets_target"] is True and bs64["figures"]["2:4 at fp16"] is None
    assert bs64["matrix_ms"] == {"fp16 dense": 11.0} and bs64["planner_vs_masked_fp16"] is None
    assert summary["by_batch"]["bs256"]["figures"] == {} and summary["stream"]["speedup"] is None
    assert summary["tuning"] == {"alg_ids_offered": {"fp16": 60}} and summary["cusparselt"] is None
    assert summary["plan_cache"] is None  # versions.json missing


@pytest.mark.parametrize("name, group", [
    ("sm90_xmma_sparse_gemm_f16f16_f32f16_f16_tn_n_tilesize128x128x128_warpgroupsize2x1x1_kernel", "2:4 GEMM, fp16"),
    ("sm90_xmma_sparse_gemm_s8s8_s32f16_f16_tn_n_tilesize128x128x128_epilogue_gelu", "2:4 GEMM, 8-bit"),
    ("sm80_xmma_gemm_i8i8_i32_tn_n_tilesize128x128x64_stage4_kernel", "dense GEMM, 8-bit"),
    ("sm90_xmma_gemm_e4m3e4m3_bf16f32_f32_tn_n_tilesize128x128x128_cublas", "dense GEMM, 8-bit"),
    ("aten::_int_mm", "dense GEMM, 8-bit"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_kernel__5x_cublas",
     "dense GEMM, fp16"),
    ("aten::addmm", "dense GEMM, fp16"),
    ("fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("triton_per_fused__to_copy_add_clamp_div_mul_native_layer_norm_round_1", "norms (and what is fused into them)"),
    ("aten::native_layer_norm", "norms (and what is fused into them)"),
    ("_quantize", "quantize"),
    ("triton_poi_fused_clamp_div_gelu_mul_round_3", "quantize"),
    ("triton_poi_fused_gelu_2", "other fused elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other fused elementwise"),
    ("Memcpy HtoD (Pageable -> Device)", "copies"),
    # names an H100 gave: cuBLAS's nvjet GEMMs, and inductor kernels named after the GEMM or attention they follow
    ("nvjet_sm90_hsh_192x192_64x4_1x2_h_bz_coopB_bias_TNN", "dense GEMM, fp16"),
    ("nvjet_sm90_hsh_192x192_64x4_1x2_h_bz_coopB_gelubias_TNN", "dense GEMM, fp16"),  # cuBLASLt's GELU epilogue
    ("nvjet_sm90_qqhsh_192x192_128x4_1x2_h_bz_coopB_bias_TNN", "dense GEMM, 8-bit"),
    ("nvjet_hsh_128x256_64x5_2x1_h_bx_coopA_bias_sp_TNT", "2:4 GEMM, fp16"),  # cuSPARSELt 0.10's
    ("sm90_xmma_sparse_gemm_i8f16_i8i32_f32_tn_n_tilesize128x256x128_cgasize1x1x1_warpgroupsize2x1x1_bias_f16",
     "2:4 GEMM, 8-bit"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_i16832gemm_s8_128x64_128x3_tn_align16>(", "dense GEMM, 8-bit"),
    ("triton_poi_fused__cslt_sparse_mm__to_copy_clamp_gelu_mul_round_t_view_2", "quantize"),
    ("triton_per_fused__cslt_sparse_mm__to_copy_add_clamp_mul_native_layer_norm_round_t_view_1",
     "norms (and what is fused into them)"),
    ("triton_per_fused__scaled_mm__to_copy_add_clamp_div_native_layer_norm_view_2", "norms (and what is fused into them)"),
    ("triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy_add_mul_split_transpose_view_1",
     "other fused elementwise"),
    ("triton_poi_fused__scaled_mm__to_copy_clamp_div_gelu_view_3", "quantize"),  # GELU, then to fp8
    ("aten::empty", "other"),
])
def test_kernels_and_ops_are_grouped_by_what_they_do(name, group):
    assert engine_profile.group_of(name) == group


def test_groups_hold_the_devices_own_time_per_forward_with_their_busiest_kernels():
    def event(key, device_type, device_us, cpu_us=0):
        return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=device_us,
                               self_cpu_time_total=cpu_us)

    events = [event("aten::addmm", DeviceType.CPU, 6000, 300),  # its kernels' time again: left out on a GPU
              *(event(f"sm90_xmma_gemm_f16f16_k{i}", DeviceType.CUDA, 1000 * (i + 1)) for i in range(4)),
              event("flash_fwd_kernel", DeviceType.CUDA, 2000), event("triton_poi_fused_gelu_0", DeviceType.CUDA, 0)]
    total_ms, groups = engine_profile.grouped(events, steps=2, on_gpu=True)
    assert total_ms == (1000 + 2000 + 3000 + 4000 + 2000) / 1000 / 2
    assert list(groups) == ["dense GEMM, fp16", "attention"]  # by time; a group with no time is left out
    assert groups["dense GEMM, fp16"] == {"ms": 5.0, "share": round(10 / 12, 4), "kernels": {
        "sm90_xmma_gemm_f16f16_k3": 2.0, "sm90_xmma_gemm_f16f16_k2": 1.5, "sm90_xmma_gemm_f16f16_k1": 1.0,
        "sm90_xmma_gemm_f16f16_k0": 0.5}}
    assert list(groups["dense GEMM, fp16"]["kernels"])[0] == "sm90_xmma_gemm_f16f16_k3"  # busiest first
    cpu_ms, cpu_groups = engine_profile.grouped(events, steps=2, on_gpu=False)
    assert cpu_ms == 0.15 and list(cpu_groups) == ["dense GEMM, fp16"]


def test_a_cpu_profile_groups_each_models_op_time(work, tmp_path, tiny_model):
    from conftest import tiny_params

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(tiny_model)))
    out = tmp_path / "profile.json"
    engine_profile.main(["--work", str(work), "--params", str(params_file), "--batch-sizes", "2", "--seq-length",
                         "16", "--steps", "2", "--warmup", "1", "--no-compile", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["compiled"] is False and result["seq_length"] == 16
    models = result["by_batch"]["bs2"]
    assert set(models) == {"dense", "accelerated"}
    for figures in models.values():
        assert "graphed_ms" not in figures and figures["wall_ms"] > 0
        groups = figures["groups"]
        assert {"dense GEMM, fp16", "attention", "norms (and what is fused into them)"} <= set(groups)
        assert sum(group["ms"] for group in groups.values()) == pytest.approx(figures["cpu_op_ms"], rel=1e-3)
        assert sum(group["share"] for group in groups.values()) == pytest.approx(1, abs=1e-3)


def test_the_host_cost_benchmark_times_the_same_model_with_its_linears_on_the_dense_path(capsys, monkeypatch):
    dense, engine = eager_host_cost.models(layers=2)
    assert not any(isinstance(module, SparseLinear) for module in dense.modules())
    monkeypatch.setattr(sys, "argv", ["eager_host_cost.py", "--layers", "2", "--rounds", "3", "--calls", "2"])
    eager_host_cost.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:2]] == ["nn.Linear", "SparseLinear, dense path"]
    assert lines[2].startswith("nn.Linear time / SparseLinear time: ") and "over 3 rounds, 12 Linears" in lines[2]
