"""Quantization of the split modules per a recipe's ``[quantize.PART]`` tables, with torchao (ExecuTorch/XNNPACK).

- Weights: symmetric int4 grouped / int8 per-channel integers and scales as torchao computes them
  (``weight_qparams``): ``rtn`` by torchao, ``hqq`` by ``quantize.hqq`` (torchao's algorithm, bit for bit, ~10x
  faster: ~160 s of a 1.7B build was torchao's HQQ).
- Linears: ``8da4w`` / ``8da8w`` = int8 dynamic per-token activations with those weights (torchao's
  ``Int8DynamicActivationIntxWeightConfig``), which XNNPACK's dynamic-quant partitioner lowers. A linear whose
  input width the group size does not divide falls back to per-channel 8da8w, and the log says so. Each is written
  in ``quantized_decomposed`` ops (``DynamicQuantLinear``), not torchao's: the same delegate bytes, at about 0.7 of
  the lowering time (the demo's split_compile 49.5 -> 34.1 s).
- Embeddings: ``int8`` (per row) or ``int4`` (grouped) weight-only, as ExecuTorch's ``quantized_decomposed``
  embedding ops (packed two nibbles per byte for int4), which gather rows without dequantizing the table.

Quantization replaces weights in place: modules shared with the reference model are quantized too, so golden
reference outputs must be computed before (the pipeline does).
"""

from __future__ import annotations

import torch
from torch import nn

from mobilevlm_export.quantize.hqq import scale_only_hqq
from mobilevlm_export.quantize.plan import QuantPlan, QuantResult
from mobilevlm_export.schema import Precision, QuantAlgorithm

# what torchao calls each algorithm (its intx_choose_qparams_algorithm)
QPARAMS = {QuantAlgorithm.RTN: "affine", QuantAlgorithm.HQQ: "hqq_scale_only"}


def int_range(bits: int) -> tuple[int, int]:
    """The signed ``bits``-bit integers' range: (-8, 7) for 4, (-128, 127) for 8."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def weight_qparams(weight: torch.Tensor, bits: int, group_size: int,
                   qparams: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric ``bits``-bit quantization of a 2-D weight with one scale per ``group_size`` inputs of a row (its
    width: per channel), as torchao's ``IntxUnpackedToInt8Tensor.from_hp`` computes it for ``qparams`` (what its
    ``Int8DynamicActivationIntxWeightConfig`` and ``IntxWeightOnlyConfig`` store): ``(qdata int8 [out, in], scale
    [out, in // group_size] in the weight's dtype, zero_point int8, all zeros)``. ``hqq_scale_only`` is
    ``quantize.hqq``'s (torchao's algorithm, the same bits, faster); ``affine`` is torchao's own."""
    qmin, qmax = int_range(bits)
    if qparams == "hqq_scale_only":
        qdata, scale = scale_only_hqq(weight, group_size, qmin, qmax)
        return qdata, scale, torch.zeros_like(scale, dtype=torch.int8)
    from torchao.quantization.quantize_.workflows import IntxChooseQParamsAlgorithm, IntxUnpackedToInt8Tensor

    t = IntxUnpackedToInt8Tensor.from_hp(weight, (1, group_size), torch.int4 if bits == 4 else torch.int8,
                                         intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm(qparams))
    rows = weight.shape[0]
    return t.qdata, t.scale.reshape(rows, -1), t.zero_point.reshape(rows, -1)


def quantize_linears(module: nn.Module, scheme: str, group_size: int, qparams: str, name: str,
                     skip: tuple[str, ...] = (), only: tuple[str, ...] = ("",)) -> list[str]:
    """Quantize the ``nn.Linear`` submodules of ``module`` whose qualified names start with one of ``only`` and
    none of ``skip``, in place (each becomes a ``DynamicQuantLinear``); returns log lines (what was quantized,
    what fell back)."""
    if scheme == "fp32":
        return [f"{name}: linears kept fp32"]
    if isinstance(module, nn.Linear):
        raise ValueError(f"{name}: pass the linear's parent module (a linear is replaced in its parent)")
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    widths = {fqn: m.in_features for fqn, m in module.named_modules()
              if isinstance(m, nn.Linear) and fqn and fqn.startswith(only) and not fqn.startswith(skip)}
    fallback = sorted(f for f, width in widths.items() if scheme == "8da4w" and width % group_size)
    with torch.no_grad():
        for fqn in sorted(widths):  # (no reference to a replaced linear is kept: each fp32 weight is freed at once)
            parent, _, leaf = fqn.rpartition(".")
            owner = module.get_submodule(parent) if parent else module
            linear = getattr(owner, leaf)
            bits, group = (4, group_size) if scheme == "8da4w" and fqn not in fallback else (8, widths[fqn])
            quantized = DynamicQuantLinear(*weight_qparams(linear.weight.detach(), bits, group, qparams), bits,
                                           linear.bias)
            del linear
            setattr(owner, leaf, quantized)
    detail = f" group {group_size}" if scheme == "8da4w" else " per-channel"
    lines = [f"{name}: {len(widths) - len(fallback)} linears {scheme}{detail}"]
    if fallback:
        odd = sorted({widths[f] for f in fallback})
        lines.append(f"{name}: {len(fallback)} linears with input width {odd} not divisible by group {group_size} "
                     f"fall back to per-channel 8da8w: {', '.join(fallback[:6])}{' ...' if len(fallback) > 6 else ''}")
    return lines


class DynamicQuantLinear(nn.Module):
    """A linear with int8 dynamic per-token activations and int4 grouped or int8 per-channel weights (torchao's
    ``Int8DynamicActivationIntxWeightConfig``: its integers and scales, from ``weight_qparams``), written in
    ExecuTorch's ``quantized_decomposed`` ops instead of torchao's: the same pattern for XNNPACK's dynamic-quant
    partitioner (which lowers either to the same delegate bytes), but each op has a meta kernel. torchao's
    ``choose_qparams_affine`` / ``quantize_affine`` / ``dequantize_affine`` are CompositeImplicitAutograd ops
    without one, so every fake-tensor retrace of the graph (torch.export, each ``run_decompositions``, each of
    ExecuTorch's edge passes and XNNPACK's 17 preprocess passes) runs their Python bodies op by op."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                 bias: torch.Tensor | None) -> None:
        """``weight_qparams``'s ``qdata [out, in]``, ``scale`` and ``zero_point`` (each ``[out, groups]``)."""
        super().__init__()
        in_features = qdata.shape[1]
        self.quant_min, self.quant_max = int_range(bits)
        self.group_size = in_features // scale.shape[1]
        self.register_buffer("weight", qdata)
        self.register_buffer("scales", scale.float().clone())
        self.register_buffer("zero_points", zero_point.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        scale, zero = qd.choose_qparams_per_token_asymmetric(x, torch.int8)
        xq = qd.quantize_per_token(x, scale, zero, -128, 127, torch.int8)
        xd = qd.dequantize_per_token(xq, scale, zero, -128, 127, torch.int8, torch.float32)
        wd = qd.dequantize_per_channel_group(self.weight, self.scales, self.zero_points, self.quant_min,
                                             self.quant_max, torch.int8, self.group_size, torch.float32)
        return torch.nn.functional.linear(xd, wd, self.bias)


class QuantizedEmbedding(nn.Module):
    """Weight-only int8/int4 embedding through ``quantized_decomposed.embedding_byte/embedding_4bit``."""

    def __init__(self, embedding: nn.Embedding, bits: int, group_size: int, qparams: str) -> None:
        super().__init__()
        import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (registers the ops)

        width = embedding.weight.shape[1]
        group = group_size if bits == 4 and group_size and width % group_size == 0 else width  # (else per row)
        with torch.no_grad():
            q, scales, _ = weight_qparams(embedding.weight.detach().float(), bits, group, qparams)
        if bits == 4:  # two signed nibbles per byte, the first in the high half, stored offset by 8
            u = (q.to(torch.int16) + 8).to(torch.uint8)
            q = (u[:, ::2] << 4 | u[:, 1::2]).contiguous()
        self.bits = bits
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.float().squeeze(-1).contiguous())  # ([rows] per row)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.bits == 4:
            return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                self.weight, self.scales, None, -8, 7, input_ids, dtype=torch.float32)
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.weight, self.scales, None, -128, 127, input_ids, dtype=torch.float32)


def quantize_graphs(modules: dict[str, nn.Module], plan: QuantPlan) -> QuantResult:
    """Quantize the static-KV graphs' modules in place per ``plan``; returns the build log's lines.

    ``modules``: ``image_encoder`` (an ``ImageEncoder``), ``embed_tokens`` (an ``EmbedTokens``) and ``decoder``
    (a ``StaticKVDecoder``); ``plan``: the parts image_encoder, embed_tokens, decoder, lm_head, a part's group size
    ``plan.default_group_size`` where it names none."""
    default_group = plan.default_group_size

    def args(part: str) -> tuple[str, int, str]:
        q = plan.part(part)
        return q.scheme.value, q.group(default_group), QPARAMS[q.algorithm]

    dec = modules["decoder"]
    log = quantize_linears(dec, *args("decoder"), "decoder", skip=("lm_head",))
    log += quantize_linears(dec, *args("lm_head"), "lm_head", only=("lm_head",))
    log += quantize_linears(modules["image_encoder"], *args("image_encoder"), "image_encoder")
    emb = plan.part("embed_tokens")
    if emb.scheme != Precision.FP32:
        bits = 4 if emb.scheme == Precision.INT4 else 8
        group = emb.group(default_group)
        module = modules["embed_tokens"]
        module.embedding = QuantizedEmbedding(module.embedding, bits, group, QPARAMS[emb.algorithm])
        log.append(f"embed_tokens: {emb.scheme.value} weight-only" + (f" group {group}" if bits == 4 else " per row"))
    return QuantResult(tuple(log))
