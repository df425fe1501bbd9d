"""``quantize.hqq.scale_only_hqq`` is torchao's scale-only HQQ bit for bit (its private
``_choose_qparams_and_quantize_scale_only_hqq`` is the reference), whatever the blocks of rows it runs over."""

import pytest
import torch

pytest.importorskip("torchao")

from mobilevlm_export.quantize import hqq  # noqa: E402


def _torchao(weight, group_size, qmin, qmax):
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_scale_only_hqq

    qdata, scale = _choose_qparams_and_quantize_scale_only_hqq(weight, [1, group_size], qmin, qmax)
    return qdata.to(torch.int8), scale


@pytest.mark.parametrize("shape,group_size,bits,dtype,block_bytes", [
    ((96, 256), 32, 4, torch.float32, 4096),          # 4 rows a block, 24 blocks
    ((101, 384), 128, 4, torch.float32, 3 * 384 * 4),  # 3 rows a block, the last one short
    ((64, 192), 192, 8, torch.float32, 1000),         # per channel, 1 row a block (less than a row's bytes)
    ((80, 256), 64, 4, torch.bfloat16, 8192),         # computed in fp32, scales returned in bf16
    ((48, 128), 32, 4, torch.float16, hqq.BLOCK_BYTES),  # one block
])
def test_same_bits_as_torchao(shape, group_size, bits, dtype, block_bytes, monkeypatch):
    monkeypatch.setattr(hqq, "BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    weight = (torch.randn(shape) * torch.logspace(-3, 0, shape[1])).to(dtype)  # groups of very different scales
    weight[5] = 0  # an all-zero row: every update keeps its scale (den == 0)
    weight[7, :group_size] = 0
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    qdata, scale = hqq.scale_only_hqq(weight, group_size, qmin, qmax)
    want_q, want_scale = _torchao(weight, group_size, qmin, qmax)
    assert qdata.dtype == torch.int8 and scale.dtype == dtype
    assert scale.shape == (shape[0], shape[1] // group_size)
    assert torch.equal(qdata, want_q)
    assert torch.equal(scale, want_scale)
    assert int(qdata.min()) >= qmin and int(qdata.max()) <= qmax


@pytest.mark.parametrize("shape,group_size,qrange,match", [
    ((4, 30), 8, (-8, 7), "groups of 8"),
    ((4, 4, 4), 4, (-8, 7), "2-D"),
    ((4, 32), 8, (-8, 300), "within int8"),
])
def test_bad_arguments_are_refused(shape, group_size, qrange, match):
    with pytest.raises(ValueError, match=match):
        hqq.scale_only_hqq(torch.zeros(shape), group_size, *qrange)
