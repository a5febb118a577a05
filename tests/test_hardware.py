"""The CPU facts the reports record, and the one-line refusal of a precision this machine cannot run."""
from __future__ import annotations

from stages.hardware import cpu_facts, cpu_multiplies_bf16, precision_error

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma avx512f\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")


def test_cpu_facts_name_the_model_and_the_numeric_instruction_sets():
    assert cpu_facts(EPYC) == {"cpu_model": "AMD EPYC 7B13", "cpu_flags": ["avx2", "fma", "avx512f"]}
    assert cpu_facts(SAPPHIRE_RAPIDS)["cpu_flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                                       "amx_tile", "amx_bf16", "amx_int8"]
    assert cpu_facts("") == {"cpu_model": "unknown", "cpu_flags": []}
    assert cpu_facts()["cpu_model"] != "unknown"  # this machine's


def test_bf16_is_refused_in_one_line_where_the_cpu_cannot_multiply_it():
    assert not cpu_multiplies_bf16(EPYC) and cpu_multiplies_bf16(SAPPHIRE_RAPIDS)
    assert precision_error("bf16", "train.precision", False, False, EPYC) == (
        "train.precision = bf16: this CPU (AMD EPYC 7B13) has no bf16 instructions (avx512_bf16 or amx_bf16); use fp32")
    assert precision_error("bf16", "train.precision", False, False, SAPPHIRE_RAPIDS) is None
    assert "needs a GPU" in precision_error("fp16", "finetune.precision", False, False, SAPPHIRE_RAPIDS)
    assert precision_error("bf16", "train.precision", True, False) == (
        "train.precision = bf16: this GPU has no bf16; use fp16 or auto")
    for always in ("fp32", "auto"):
        assert precision_error(always, "train.precision", False, False, EPYC) is None
