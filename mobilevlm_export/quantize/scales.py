"""Quantization math (numpy): symmetric scales, blocked int4 and per-channel int8 weights, and the INT4
initializer they are stored in (packed two per byte).

All schemes are symmetric (zero point 0, as TensorRT requires), with scales in the weight's float dtype (fp32 or
fp16), each > 0.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from mobilevlm_export.quantize.graph import QdqError


def quantize_int4_blocked(w: np.ndarray, block_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 of ``w [K, N]`` in blocks of ``block_size`` rows: ``(q int8 in [-8, 7] [K, N],
    scale [K/B, N] in w's dtype)`` with ``w ~= q * repeat(scale, B, axis=0)``. Scales are ``amax / 7`` rounded to
    w's dtype first (q is computed with the rounded scale); an all-zero block gets scale 1."""
    k, n = w.shape
    if k % block_size:
        raise QdqError(f"block size {block_size} does not divide K={k}")
    blocks = w.astype(np.float32).reshape(k // block_size, block_size, n)
    scale = _int4_scales(blocks, w.dtype)  # [K/B, N]
    q = np.clip(np.rint(blocks / scale.astype(np.float32)[:, None, :]), -8, 7).astype(np.int8)
    return q.reshape(k, n), scale


def int4_blocked_roundtrip(w: np.ndarray, block_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``dequantize_int4_blocked(*quantize_int4_blocked(w, block_size), block_size)`` for an fp32 ``w [K, N]``, the
    same values bit for bit, computed in place in one fp32 buffer (``out``: reused, else a new one) without the int8
    array and the repeated scales: the inner loop of ``prescale.awq_search``, which runs it per grid point over
    every weight of a layer."""
    k, n = w.shape
    if k % block_size:
        raise QdqError(f"block size {block_size} does not divide K={k}")
    blocks = w.reshape(k // block_size, block_size, n)
    scale = _int4_scales(blocks, np.float32)[:, None, :]
    buf = (np.empty_like(w) if out is None else out).reshape(blocks.shape)
    np.divide(blocks, scale, out=buf)
    np.rint(buf, out=buf)
    np.clip(buf, -8, 7, out=buf)  # (integers in [-8, 7]: what q holds, exactly, in fp32)
    np.multiply(buf, scale, out=buf)
    return buf.reshape(k, n)


def quantize_int8_per_channel(w: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w`` per slice along ``axis`` (the output channel, 1 for a ``[K, N]`` MatMul weight):
    ``(q int8 in [-127, 127], scale [w.shape[axis]] in w's dtype)``."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = _scale(np.abs(w.astype(np.float32)).max(axis=other) / 127.0, w.dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32).reshape(shape)), -127, 127)
    return q.astype(np.int8), scale


def dequantize_int4_blocked(q: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """fp32 ``q * scale`` with each scale row repeated over its block of ``block_size`` rows."""
    return q.astype(np.float32) * np.repeat(scale.astype(np.float32), block_size, axis=0)


def _int4_scales(blocks: np.ndarray, dtype) -> np.ndarray:
    """The symmetric int4 scale of each block of fp32 ``blocks [K/B, B, N]``: ``amax / 7`` in ``dtype``,
    ``[K/B, N]``."""
    return _scale(np.abs(blocks).max(axis=1) / 7.0, dtype)


def _scale(raw: np.ndarray, dtype) -> np.ndarray:
    # TensorRT's Q/DQ importer requires every scale > 0: an all-zero block/channel gets scale 1 (its values
    # quantize to 0 whatever the scale), and an fp16 scale that underflows gets the smallest subnormal
    s = np.where(raw > 0, raw, 1.0).astype(dtype)
    return np.where(s > 0, s, np.finfo(dtype).smallest_subnormal).astype(dtype)


def int4_tensor(q: np.ndarray, name: str) -> TensorProto:
    """An INT4 initializer from int8 values in [-8, 7], packed two per byte (element 2i in the low nibble)."""
    if q.size and (q.min() < -8 or q.max() > 7):
        raise QdqError(f"{name}: int4 values must lie in [-8, 7]")
    u = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.INT4
    t.dims.extend(q.shape)
    t.raw_data = (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()
    return t
