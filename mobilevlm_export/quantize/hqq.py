"""Scale-only HQQ (half-quadratic quantization, symmetric, one scale per row-wise group of a 2-D weight): torchao's
``hqq_scale_only`` algorithm, the same integers and scales bit for bit, at about a tenth of its time.

torchao's ``_choose_qparams_and_quantize_scale_only_hqq`` runs its up to 20 least-squares updates on the whole
weight at once: each update writes five temporaries of the weight's size, so a 2048x5632 fp32 weight (46 MB) goes
through memory some 15 times per update (1.6-1.8 s per weight on this host; ~160 s of a 1.7B Snapdragon build).
Here each update runs over blocks of rows of at most ``BLOCK_BYTES``, which stay in the core's cache, in place
where torchao allocates: 0.13-0.2 s for the same weight. The arithmetic is the same op for op on the same values
(every op is elementwise, or a sum over one group, which does not depend on how many rows are summed beside it),
and the early stop is torchao's: the largest relative change of any scale of the whole weight, after each update.
``tests/test_quantize_hqq.py`` holds it to torchao's function.
"""

from __future__ import annotations

import torch

BLOCK_BYTES = 2 << 20  # fp32 rows per block: 2 MB (measured: 0.5 MB 0.43 s, 2 MB 0.14 s, 16 MB 0.51 s, whole 0.8 s)
ITERATIONS, EARLY_STOP = 20, 1e-5  # torchao's defaults


def scale_only_hqq(weight: torch.Tensor, group_size: int, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` ([out, in], any float dtype, computed in fp32) to integers in ``[qmin, qmax]`` with one
    scale per ``group_size`` consecutive inputs of a row; returns ``(qdata int8 [out, in], scale [out, in //
    group_size] in the weight's dtype)``, dequantized as ``qdata * scale``."""
    if weight.ndim != 2 or group_size < 1 or weight.shape[1] % group_size:
        raise ValueError(f"expected a 2-D weight whose width divides into groups of {group_size}, "
                         f"got shape {tuple(weight.shape)}")
    if not -128 <= qmin < qmax <= 127:
        raise ValueError(f"integer range [{qmin}, {qmax}] is not within int8")
    eps = torch.finfo(torch.float32).eps
    out_features, width = weight.shape
    groups = weight.to(torch.float32).contiguous().view(out_features, width // group_size, group_size)
    rows = max(1, BLOCK_BYTES // (width * 4))  # per block
    blocks = [slice(r, r + rows) for r in range(0, out_features, rows)]

    def rounded(block: slice, scale: torch.Tensor) -> torch.Tensor:
        return groups[block].div(scale[block].unsqueeze(-1)).round_().clamp_(qmin, qmax)

    def update(scale: torch.Tensor) -> torch.Tensor:
        """One least-squares step: per group, the scale s minimising ||w - s q|| for q rounded at ``scale``, kept
        positive (at least eps), or ``scale`` itself where q is all zeros."""
        new = torch.empty_like(scale)
        for block in blocks:
            q = rounded(block, scale)
            num = (groups[block] * q).sum(dim=2, dtype=torch.float32)
            den = q.mul_(q).sum(dim=2, dtype=torch.float32)
            new[block] = torch.where(den > 0, num / den, scale[block]).clamp_min(eps).abs()
        return new

    scale = (groups.abs().amax(dim=2) / (max(abs(qmin), abs(qmax)) or 1)).clamp_min(eps)
    for _ in range(ITERATIONS):
        new = update(scale)
        change = ((new - scale).abs() / scale.clamp_min(eps)).max()
        scale = new
        if change < EARLY_STOP:
            break
    qdata = torch.empty(out_features, width, dtype=torch.int8)
    for block in blocks:
        qdata.view_as(groups)[block] = rounded(block, scale)
    return qdata, scale.to(weight.dtype)
