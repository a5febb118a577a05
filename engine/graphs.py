"""CUDA graphs: a model captured once per input shape and replayed, which leaves the host's
per-call work (Python, cuSPARSELt planning) out of every forward after the first.

CudaGraphRunner replays the shapes it is told to capture and runs any other eagerly;
BucketedRunner serves every (batch, seq) from a bounded set of captured shapes by padding.
"""
from __future__ import annotations

import bisect
import contextlib
import gc
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .attention import capture_context

Inputs = dict[str, torch.Tensor]
Forward = Callable[[Inputs], object]  # inputs of one captured shape -> the model's output
SEQ_BUCKET = 64  # sequence buckets are its multiples


def _given(**inputs: torch.Tensor | None) -> Inputs:
    """The inputs a caller passed (a model treats a missing one differently from any value)."""
    return {name: tensor for name, tensor in inputs.items() if tensor is not None}


def _clone_tensors(output):
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)


@contextlib.contextmanager
def no_collection_during_capture():
    """Collect garbage now, then not until the capture ends. A dead runner left to the cyclic collector
    holds CUDA graphs; destroying them in the middle of another capture invalidates that capture
    (cudaErrorStreamCaptureInvalidated, reported at whichever kernel launches next). torch.cuda.graph no
    longer collects before capturing unless torch.compiler.config.force_cudagraph_gc is set."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class CapturedGraph:
    """One input signature's forward as a CUDA graph: a call copies the inputs into the static ones,
    replays, and clones the outputs, so they stay valid after the next replay."""

    def __init__(self, model: nn.Module, inputs: Inputs,
                 capture_context: Callable[[Inputs], contextlib.AbstractContextManager], pool=None):
        self.static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        with capture_context(inputs):
            # Warm up once on a side stream (cuBLAS/cuSPARSELt handles, workspaces), as capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model(**self.static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with no_collection_during_capture(), torch.cuda.graph(self.graph, pool=pool):
                self.static_output = model(**self.static_inputs)

    def __call__(self, inputs: Inputs):
        for name, tensor in inputs.items():
            self.static_inputs[name].copy_(tensor)
        self.graph.replay()
        return _clone_tensors(self.static_output)


class CudaGraphRunner(nn.Module):
    """Runs a QA-style model as one replayed CUDA graph per input signature (shapes + which inputs).

    A signature is captured on its first call when `capturable(input_ids.shape)` says so (the
    shapes the kernels were tuned for); any other call runs the model eagerly. With `compile`, what
    is captured is torch.compile(model) (static shapes): that fuses each Linear's int8 quantization
    into the LayerNorm or GELU before it, and the elementwise ops around the matmuls, which capturing
    the eager modules leaves as separate kernels. Graphs share one memory pool; outputs are cloned, so they stay
    valid after the next call. Warm-up and capture run inside `capture_context(inputs)`, where the
    caller can say what the inputs imply.

    With `max_graphs`, at most that many graphs are kept: capturing one more drops the least
    recently used, whose memory goes back to the shared pool for the next capture. `capture` (for
    tests) replaces the CUDA capture: inputs of one signature -> a function that runs such inputs.
    """

    def __init__(self, model: nn.Module, capturable: Callable[[torch.Size], bool] = lambda shape: True,
                 capture_context: Callable[[Inputs], contextlib.AbstractContextManager] | None = None,
                 compile: bool = False, max_graphs: int | None = None,
                 capture: Callable[[Inputs], Forward] | None = None):
        super().__init__()
        if max_graphs is not None and max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs}: keep at least one graph")
        self.model = model
        self.captured = torch.compile(model, dynamic=False) if compile else model
        self.capture_context = capture_context or (lambda inputs: contextlib.nullcontext())
        self.config = getattr(model, "config", None)
        self.capturable = capturable
        self.max_graphs = max_graphs
        self.capture = capture  # None: _capture_graph (a bound method kept here would make the runner a cycle)
        self.graphs: OrderedDict[tuple, Forward] = OrderedDict()  # least recently used first
        self.pool = None

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        inputs = _given(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        signature = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        replay = self.graphs.get(signature)
        if replay is not None:
            self.graphs.move_to_end(signature)
        elif not self.capturable(input_ids.shape):
            return self.model(**inputs)
        else:
            if self.max_graphs is not None and len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            replay = self.graphs[signature] = (self.capture or self._capture_graph)(inputs)
        return replay(inputs)

    def _capture_graph(self, inputs: Inputs) -> Forward:
        if not inputs["input_ids"].is_cuda:  # no graph on a CPU: the model itself, so the bookkeeping runs there too
            model = self.model  # not self: the runner would hold itself through its graphs
            return lambda inputs: model(**inputs)
        graph = CapturedGraph(self.captured, inputs, self.capture_context, self.pool)
        self.pool = graph.graph.pool()
        return graph


class BucketedRunner(CudaGraphRunner):
    """Any (batch, seq) at the speed of a captured graph: inputs are padded up to the smallest
    bucket (batch', seq') that holds them, the bucket's graph is captured on first use (at most
    `max_graphs` kept, least recently used dropped) and replayed, and the outputs are cut back to
    [:batch, :seq], as CUDA-graph servers batch variable requests.

    Padding is masked: input_ids get pad_token_id, attention_mask and token_type_ids 0, so with
    absolute positions (BERT) the real tokens' outputs equal the unpadded model's. A call that fills
    its bucket exactly goes in as given (without an attention_mask, its graph drops the masks).
    Batches past the largest bucket run as chunks of that size; sequences past the largest bucket
    run eagerly, unpadded (only possible when seq_buckets stop below the model's maximum length).
    Outputs are QA-style: every tensor in them is (batch, seq, ...) or (batch,).
    """

    def __init__(self, model: nn.Module, batch_buckets: list[int], seq_buckets: list[int], max_graphs: int = 8,
                 pad_token_id: int | None = None, **runner_options):
        super().__init__(model, max_graphs=max_graphs, **runner_options)
        self.batch_buckets = sorted(set(batch_buckets))
        self.seq_buckets = sorted(set(seq_buckets))
        if pad_token_id is None:
            pad_token_id = getattr(self.config, "pad_token_id", None) or 0  # any id does: the mask hides it
        self.pad_token_id = pad_token_id

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        inputs = _given(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        batch, seq = input_ids.shape
        if seq > self.seq_buckets[-1]:
            return self.model(**inputs)
        largest = self.batch_buckets[-1]
        if batch > largest:
            chunks = [self(**{name: tensor[begin:begin + largest] for name, tensor in inputs.items()})
                      for begin in range(0, batch, largest)]
            return pytree.tree_map(lambda *parts: torch.cat(parts), *chunks)
        bucket = (_bucket(batch, self.batch_buckets), _bucket(seq, self.seq_buckets))
        if bucket == (batch, seq):
            return super().forward(**inputs)
        output = super().forward(**self._padded(inputs, *bucket))
        return pytree.tree_map(lambda t: t[:batch, :seq] if t.dim() > 1 else t[:batch], output)

    def _padded(self, inputs: Inputs, batch: int, seq: int) -> Inputs:
        input_ids = inputs["input_ids"]
        real_batch, real_seq = input_ids.shape
        inputs = {**inputs, "attention_mask": inputs.get("attention_mask", torch.ones_like(input_ids))}
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        padded = {}
        for name, tensor in inputs.items():
            padded[name] = tensor.new_full((batch, seq), fill[name])
            padded[name][:real_batch, :real_seq] = tensor
        # Filler rows attend to their first token: no row is masked everywhere, where attention is
        # undefined (some kernels give NaN).
        padded["attention_mask"][real_batch:, 0] = 1
        return padded


def _bucket(size: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `size` (the caller has checked that one does)."""
    return buckets[bisect.bisect_left(buckets, size)]


def bucketed(model: nn.Module, batch_sizes: list[int], seq_length: int, compile: bool,
             max_graphs: int = 8) -> BucketedRunner:
    """The model serving any (batch, seq) from CUDA graphs: batch buckets are the tuned batch sizes
    and the powers of two below the largest, sequence buckets the tuned seq_length and multiples of
    SEQ_BUCKET up to the model's maximum length. Inputs without padding drop the attention masks
    while captured (attention.capture_context). With compile, each bucket is a recompile: past
    torch.compile's recompile limit (8 by default) further buckets are captured uncompiled."""
    largest = max(batch_sizes)
    batch_buckets = [1 << power for power in range(largest.bit_length()) if 1 << power < largest] + list(batch_sizes)
    max_length = getattr(model.config, "max_position_embeddings", seq_length)
    seq_buckets = list(range(SEQ_BUCKET, max_length + 1, SEQ_BUCKET)) + [seq_length]
    return BucketedRunner(model, batch_buckets, seq_buckets, max_graphs=max_graphs,
                          capture_context=capture_context, compile=compile)
