"""CUDA graphs: a model captured once per input shape and replayed, which leaves the host's
per-call work (Python, cuSPARSELt planning) out of every forward after the first.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .attention import capture_context


def _clone_tensors(output):
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)


class CudaGraphRunner(nn.Module):
    """Runs a QA-style model as one replayed CUDA graph per input signature (shapes + which inputs).

    A signature is captured on its first call when `capturable(input_ids.shape)` says so (the
    shapes the kernels were tuned for); any other call runs the model eagerly. With `compile`, what
    is captured is torch.compile(model) (static shapes): on an H100 that fuses each Linear's int8
    quantization into the LayerNorm or GELU before it, and made dense bert-base ~10% faster than
    capturing the eager modules. Graphs share one memory pool; outputs are cloned, so they stay
    valid after the next call. Warm-up and capture run inside `capture_context(inputs)`, where the
    caller can say what the inputs imply.
    """

    def __init__(self, model: nn.Module, capturable: Callable[[torch.Size], bool] = lambda shape: True,
                 capture_context: Callable[[dict], contextlib.AbstractContextManager] | None = None,
                 compile: bool = False):
        super().__init__()
        self.model = model
        self.captured = torch.compile(model, dynamic=False) if compile else model
        self.capture_context = capture_context or (lambda inputs: contextlib.nullcontext())
        self.config = getattr(model, "config", None)
        self.capturable = capturable
        self.graphs: dict[tuple, tuple[dict, torch.cuda.CUDAGraph, object]] = {}
        self.pool = None

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        inputs = {name: tensor for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                                    ("token_type_ids", token_type_ids)) if tensor is not None}
        signature = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        entry = self.graphs.get(signature)
        if entry is None:
            if not self.capturable(input_ids.shape):
                return self.model(**inputs)
            entry = self.graphs[signature] = self._capture(inputs)
        static_inputs, graph, static_output = entry
        for name, tensor in inputs.items():
            static_inputs[name].copy_(tensor)
        graph.replay()
        return _clone_tensors(static_output)

    def _capture(self, inputs: dict[str, torch.Tensor]):
        static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        with self.capture_context(inputs):
            # Warm up once on a side stream (cuBLAS/cuSPARSELt handles, workspaces), as capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.captured(**static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_output = self.captured(**static_inputs)
        self.pool = graph.pool()
        return static_inputs, graph, static_output


def graphed(model: nn.Module, batch_sizes: list[int], seq_length: int, compile: bool) -> CudaGraphRunner:
    """The model replaying a CUDA graph at each (batch size, seq_length) it was tuned for, eager at
    any other shape; attention masks are dropped while inputs without padding are captured."""
    tuned = {(batch, seq_length) for batch in batch_sizes}
    return CudaGraphRunner(model, capturable=lambda shape: tuple(shape) in tuned, capture_context=capture_context,
                           compile=compile)
