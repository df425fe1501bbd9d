"""Decoder sessions: how the generation loop feeds a decoder graph and keeps its KV cache between calls.

``DecoderSession`` is the loop's view (``prefill`` / ``step``, ``capacity``, ``max_prompt``). Two kinds:

- ``BoundKVSession``, dynamic-KV graphs (ONNX Runtime, TensorRT): the cache stays where the backend computes it.
  Per layer, key and value get two buffers each, allocated once at the session's capacity; each call reads
  ``past_key_values.*`` from one and writes ``present.*`` (past + new positions, contiguous) into the other, and
  the next call swaps them (ping-pong). No buffer is allocated or freed after the first call, the cache never
  travels to the host, and only the new positions' embeddings and positions go in and the last position's
  logits come out. The backend supplies the buffers and bindings (``DecoderBindings``): ONNX Runtime's IO
  binding on the host, TensorRT's tensor addresses on a GPU.
- ``StaticKVSession``, static-KV programs (ExecuTorch): the cache lives in the method's buffers; each call passes
  the cache positions it writes.

A CUDA-graph replay of decode is not used: the decode engine's ``past`` dim grows by one every step, so each
step has new shapes and TensorRT enqueues differently; a captured graph replays one shape only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.graphs.contracts import GraphContract, kv_names


class DecoderSession(Protocol):
    capacity: int    # how many positions (prompt + answer) the session can hold
    max_prompt: int  # the longest prompt one prefill takes (image tokens included)

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Start a new sequence with ``embeds`` [1, S, H]; the last position's logits [1, vocab]."""

    def step(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` [1, 1, H]; logits [1, vocab]."""


class DecoderBindings(Protocol):
    """A backend's buffers and bindings over one dynamic-KV decoder graph. Buffers are opaque integer handles
    (a device pointer on a GPU, a host address on the CPU); ``bind`` names a graph input or output."""

    contract: GraphContract

    def allocate(self, nbytes: int) -> int: ...

    def upload(self, buf: int, array: np.ndarray) -> None: ...

    def download(self, buf: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...

    def execute(self, inputs: dict[str, tuple[int, tuple[int, ...]]],
                outputs: dict[str, tuple[int, tuple[int, ...]]]) -> None:
        """Run with each input read from (buffer, shape) and each output written to (buffer, shape)."""


class BoundKVSession:
    """Runs a dynamic-KV decoder through ``DecoderBindings`` with the cache kept in ping-pong buffers (see the
    module doc). ``capacity``: positions the cache holds (the decode profile's past + 1); ``max_prompt``: the
    longest prefill (the prefill profile's seq); ``limit_key``: the recipe key that raises ``max_prompt``, named
    in the error for a longer prompt."""

    def __init__(self, bindings: DecoderBindings, layers: int, capacity: int, max_prompt: int,
                 limit_key: str | None = None) -> None:
        c = bindings.contract
        self.bindings = bindings
        self.layers = layers
        self.capacity = capacity
        self.max_prompt = min(max_prompt, capacity)
        self.limit_key = limit_key
        specs = {t.name: t for t in (*c.inputs, *c.outputs)}
        self._kv = specs[kv_names(0)[0]]
        self._embeds, self._mask, self._pos = specs["inputs_embeds"], specs["attention_mask"], specs["position_ids"]
        self._logits = specs["logits"]
        self._last_only = self._logits.dims[1] == 1
        self._batch = 0
        self._length = 0
        self._cur = 0  # which of the two buffers of each layer holds the cache

    def _setup(self, batch: int) -> None:
        """Every buffer of the session, once (again only if the batch changes)."""
        b = self.bindings
        kv_heads, head_dim = self._kv.dims[1], self._kv.dims[3]
        kv_bytes = batch * kv_heads * self.capacity * head_dim * np.dtype(self._kv.dtype).itemsize
        self._cache = {name: (b.allocate(kv_bytes), b.allocate(kv_bytes))
                       for i in range(self.layers) for name in kv_names(i)[:2]}
        hidden = self._embeds.dims[2]
        self._embeds_buf = b.allocate(batch * self.max_prompt * hidden * np.dtype(self._embeds.dtype).itemsize)
        self._pos_buf = b.allocate(batch * self.max_prompt * np.dtype(self._pos.dtype).itemsize)
        self._mask_buf = b.allocate(batch * self.capacity * np.dtype(self._mask.dtype).itemsize)
        b.upload(self._mask_buf, np.ones((batch, self.capacity), self._mask.dtype))  # a prefix is bound per call
        vocab = self._logits.dims[2]
        rows = 1 if self._last_only else self.max_prompt
        self._logits_buf = b.allocate(batch * rows * vocab * np.dtype(self._logits.dtype).itemsize)
        self._batch = batch

    def _run(self, embeds: np.ndarray) -> np.ndarray:
        batch, s = embeds.shape[:2]
        if batch != self._batch:
            self._setup(batch)
        past = self._length
        if past + s > self.capacity:
            raise UserError(f"the decoder holds {self.capacity} positions; {past} used, {s} more do not fit (shorten "
                            "the prompt or lower --max-new-tokens)")
        if s > self.max_prompt:
            raise UserError(f"a prompt of {s} positions (image tokens included) is longer than the {self.max_prompt} "
                            "the decoder takes in one prefill" + (f" (raise {self.limit_key} and rebuild)"
                                                                  if self.limit_key else ""))
        b = self.bindings
        b.upload(self._embeds_buf, np.ascontiguousarray(embeds, self._embeds.dtype))
        b.upload(self._pos_buf, np.broadcast_to(np.arange(past, past + s, dtype=self._pos.dtype), (batch, s)))
        kv_heads, head_dim = self._kv.dims[1], self._kv.dims[3]
        rows = 1 if self._last_only else s
        inputs = {"inputs_embeds": (self._embeds_buf, (batch, s, self._embeds.dims[2])),
                  "attention_mask": (self._mask_buf, (batch, past + s)),
                  "position_ids": (self._pos_buf, (batch, s))}
        outputs = {"logits": (self._logits_buf, (batch, rows, self._logits.dims[2]))}
        for i in range(self.layers):
            pk, pv, ok, ov = kv_names(i)
            for p, o in ((pk, ok), (pv, ov)):
                bufs = self._cache[p]
                inputs[p] = (bufs[self._cur], (batch, kv_heads, past, head_dim))
                outputs[o] = (bufs[1 - self._cur], (batch, kv_heads, past + s, head_dim))
        b.execute(inputs, outputs)
        self._cur = 1 - self._cur
        self._length = past + s
        vocab = self._logits.dims[2]
        itemsize = np.dtype(self._logits.dtype).itemsize
        return b.download(self._logits_buf, (rows - 1) * vocab * itemsize, (1, vocab), np.dtype(self._logits.dtype))

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        self._length = 0
        self._cur = 0
        return self._run(embeds)

    def step(self, embeds: np.ndarray) -> np.ndarray:
        return self._run(embeds)


class StaticKVSession:
    """Runs a static-KV decoder (ExecuTorch): the cache lives in the method's buffers; each call passes the
    cache positions it writes. Prefill longer than ``max_prefill`` goes in chunks, as ExecuTorch's runner does."""

    def __init__(self, runner, capacity: int, max_prefill: int | None = None) -> None:
        self.runner = runner
        self.capacity = capacity
        self.max_prefill = max_prefill or capacity
        self.max_prompt = capacity
        self._length = 0

    def _run(self, embeds: np.ndarray) -> np.ndarray:
        s = embeds.shape[1]
        if self._length + s > self.capacity:
            raise UserError(f"the static KV cache holds {self.capacity} positions; {self._length} used, {s} more "
                            "do not fit (shorten the prompt or lower --max-new-tokens)")
        pos = np.arange(self._length, self._length + s, dtype=np.int64)
        out = self.runner.run({"inputs_embeds": np.ascontiguousarray(embeds, np.float32), "input_pos": pos})
        self._length += s
        return out["logits"][0]

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        self._length = 0
        chunks = [self._run(embeds[:, i:i + self.max_prefill]) for i in range(0, embeds.shape[1], self.max_prefill)]
        return chunks[-1]

    def step(self, embeds: np.ndarray) -> np.ndarray:
        return self._run(embeds)
