"""What this machine's CPU is and can do, read from /proc/cpuinfo (no torch import: the validate
stage asks it too, and must stay quick)."""
from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The instruction sets whose presence changes which kernels oneDNN and MKL run, and so the numbers
# a CPU gives: vector width (avx2, avx512f), bf16 (avx512_bf16, amx_bf16), int8 (avx512_vnni, amx_int8).
NUMERIC_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_facts(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and which of NUMERIC_FLAGS it has (empty where /proc/cpuinfo is absent)."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text() if CPUINFO.is_file() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "unknown"),
            "cpu_flags": [flag for flag in NUMERIC_FLAGS if flag in flags]}


def cpu_multiplies_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16, AMX): without them oneDNN emulates
    bf16, slower than fp32."""
    return bool(set(BF16_FLAGS) & set(cpu_facts(cpuinfo)["cpu_flags"]))


def precision_error(precision: str, field: str, cuda: bool, cuda_bf16: bool, cpuinfo: str | None = None) -> str | None:
    """Why `precision` (a train/finetune precision param) cannot run here, in one line, or None."""
    if precision in ("auto", "fp32"):
        return None
    if cuda:
        return None if precision == "fp16" or cuda_bf16 else f"{field} = bf16: this GPU has no bf16; use fp16 or auto"
    if precision == "fp16":
        return f"{field} = fp16: mixed fp16 training needs a GPU; use fp32 on a CPU"
    if not cpu_multiplies_bf16(cpuinfo):
        facts = cpu_facts(cpuinfo)
        return (f"{field} = bf16: this CPU ({facts['cpu_model']}) has no bf16 instructions "
                f"({' or '.join(BF16_FLAGS)}); use fp32")
    return None
