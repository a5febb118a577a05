"""How the engine runs, in one object passed to what loads or plans a model: EngineConfig. The
environment only supplies its defaults (EngineConfig.from_env, the one place that reads it), so a
library user can say everything in code.

This module imports no torch: the cuSPARSELt library it names is loaded before torch is
(engine/runtime.py).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

from .errors import InputError

CUSPARSELT_ENV = "TWOFOUR_CUSPARSELT"
PLAN_CACHE_ENV = "TWOFOUR_PLAN_CACHE"
# fused: transformers' sdpa attention with a mask the fused kernels take (engine/attention.py);
# model: whatever attention the model was loaded with.
ATTENTION_MODES = ("fused", "model")


@dataclass(frozen=True)
class EngineConfig:
    cusparselt: str | None = None  # a libcusparseLt.so.0 to run instead of torch's own; None: torch's
    plan_cache: bool = False  # each 2:4 matmul plan made once per shape (engine/plan_cache.py), not per call
    attention: str = "fused"  # one of ATTENTION_MODES

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise InputError(f"EngineConfig.attention={self.attention!r}: expected one of {', '.join(ATTENTION_MODES)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EngineConfig:
        """The defaults: $TWOFOUR_CUSPARSELT names the library, TWOFOUR_PLAN_CACHE=1 turns the plan cache on."""
        return cls(cusparselt=environ.get(CUSPARSELT_ENV) or None, plan_cache=environ.get(PLAN_CACHE_ENV) == "1")

    def as_env(self) -> dict[str, str]:
        """The environment that gives a child process (the kernel timing children) this configuration."""
        return {CUSPARSELT_ENV: self.cusparselt or "", PLAN_CACHE_ENV: "1" if self.plan_cache else "0"}

    def record(self) -> dict:
        """What a plan records of the configuration it was made with (Plan.engine)."""
        return dataclasses.asdict(self)
