"""The LLaMA decoder as an exportable graph with explicit KV-cache I/O.

It reuses the checkpoint's own modules (projections, RMSNorm, MLP, lm_head) and writes out only attention, so
the cache handling is explicit and traceable: no cache objects, no data-dependent control flow.

``DynamicKVDecoder`` (ONNX, TensorRT): past K/V in, present K/V (past + new) out; one graph serves prefill
(past = 0) and decode (seq = 1). The causal mask is built from ``attention_mask`` [B, past+seq] and the
queries' places at the end of the cache.

``StaticKVDecoder`` (ExecuTorch): the cache is a set of buffers ``k_cache_{i}``/``v_cache_{i}``
[1, max_cache, kv_heads, head_dim] written in place at ``input_pos``; forward(inputs_embeds [1, T, H],
input_pos [T]) -> logits. ``input_pos`` holds consecutive cache positions (decode: one). With ``custom_ops`` the
cache update and attention are ExecuTorch's ``llama.update_cache`` / ``llama.custom_sdpa`` (which read only
positions up to the last written one); without, ``index_copy_`` and a masked softmax over the whole cache.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilevlm_export.errors import UserError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rope(nn.Module):
    """cos/sin of rotary embeddings for integer positions, from the model's own inverse frequencies."""

    def __init__(self, rotary_emb: nn.Module, config) -> None:
        super().__init__()
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type not in ("default", "linear"):
            raise UserError(f"config.json: rope_type '{rope_type}' is not supported for export (default, linear)")
        inv_freq = rotary_emb.inv_freq.detach().float()
        # both halves' frequencies: the angles need no concatenation at run time
        self.register_buffer("inv_freq", torch.cat((inv_freq, inv_freq)), persistent=False)
        self.scale = float(getattr(rotary_emb, "attention_scaling", 1.0))

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        emb = position_ids[..., None].float() * self.inv_freq
        return (emb.cos() * self.scale).to(dtype)[:, None], (emb.sin() * self.scale).to(dtype)[:, None]


class RMSNorm(nn.Module):
    """A checkpoint's LLaMA RMSNorm (same weight, same eps) with the mean of squares taken over the last two axes
    of a [..., H, 1] view: XNNPACK's mean reduces the last two axes of a 4-D tensor (it has no mean over the last
    axis of a 3-D one), so the norm stays in the delegate. The mean's [..., 1, 1] goes back to [..., 1] by a view
    whose one dynamic size is inferred (-1): XNNPACK takes that view, not a ``squeeze_copy`` nor a view of a
    symbolic size."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        var = (x32 * x32).unsqueeze(-1).mean((-2, -1), keepdim=True).view(*x.shape[:-2], -1, 1)
        return self.weight * (x32 * torch.rsqrt(var + self.eps)).to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, attn: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim ** -0.5

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, infer_seq: bool = False):
        """New q, k (rotated) and v: [B, heads|kv_heads, S, D]. ``infer_seq``: the heads' views infer the
        sequence length (-1), views XNNPACK takes where S is dynamic (ExecuTorch), rather than name it."""
        b, s, _ = x.shape
        s = -1 if infer_seq else s
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax attention of q over all of k/v (cache included) with an additive mask; then o_proj."""
        b, _, s, _ = q.shape
        groups = self.heads // self.kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        return self.o_proj(out)


class _Layers(nn.Module):
    """What both KV styles share: the layers, final norm, lm_head and RoPE of a LlamaForCausalLM."""

    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        cfg = llm.config
        heads = cfg.num_attention_heads
        kv_heads = cfg.num_key_value_heads or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.num_layers = cfg.num_hidden_layers
        self.input_norms = nn.ModuleList(layer.input_layernorm for layer in llm.model.layers)
        self.post_norms = nn.ModuleList(layer.post_attention_layernorm for layer in llm.model.layers)
        self.mlps = nn.ModuleList(layer.mlp for layer in llm.model.layers)
        self.attns = nn.ModuleList(_Attention(layer.self_attn, heads, kv_heads, head_dim)
                                   for layer in llm.model.layers)
        self.norm = llm.model.norm
        self.lm_head = llm.lm_head
        self.rope = Rope(llm.model.rotary_emb, cfg)


class DynamicKVDecoder(_Layers):
    """forward(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *present).

    ``past`` is flat: layer 0 key, layer 0 value, layer 1 key, ... each [B, kv_heads, past, head_dim].
    ``last_logits``: logits [B, 1, vocab] of the last position only (prefill skips the lm_head over the prompt).
    """

    def __init__(self, llm: nn.Module, last_logits: bool = False) -> None:
        super().__init__(llm)
        self.last_logits = last_logits

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        h = inputs_embeds
        s = h.shape[1]
        total = attention_mask.shape[1]
        # key j is visible to query i (at cache place total - s + i) when j <= that place and not padding
        places = torch.arange(s, device=h.device) + (total - s)
        causal = torch.arange(total, device=h.device)[None, :] <= places[:, None]
        visible = causal[None, None] & (attention_mask[:, None, None, :] > 0)
        mask = torch.where(visible, 0.0, torch.finfo(torch.float32).min).to(h.dtype)
        cos, sin = self.rope(position_ids, h.dtype)
        present = []
        for i in range(self.num_layers):
            x = self.input_norms[i](h)
            attn = self.attns[i]
            q, k, v = attn.project(x, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            h = h + attn.attend(q, k, v, mask)
            h = h + self.mlps[i](self.post_norms[i](h))
        if self.last_logits:
            h = h[:, -1:]
        logits = self.lm_head(self.norm(h)).float()
        return (logits, *present)


class StaticKVDecoder(_Layers):
    """forward(inputs_embeds [1, T, H], input_pos [T]) -> logits [1, T, vocab] (``last_logits``: [1, 1, vocab]);
    the KV cache lives in buffers."""

    def __init__(self, llm: nn.Module, max_cache: int, custom_ops: bool, last_logits: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(llm)
        self.max_cache = max_cache
        self.last_logits = last_logits
        self.custom_ops = custom_ops
        attn = self.attns[0]
        # XNNPACK-friendly RMSNorm (same math): its mean is one XNNPACK op (3 us a call at 1.7B width, 2 threads,
        # where a product with a constant 1/H row took 11 us and a portable mean splits the delegate). rotate_half
        # stays two slices on portable kernels: its product form (a constant permutation matrix in XNNPACK)
        # measured 5 % slower per decode step, custom_sdpa taking 1.7x longer right after it
        self.input_norms = nn.ModuleList(RMSNorm(n) for n in self.input_norms)
        self.post_norms = nn.ModuleList(RMSNorm(n) for n in self.post_norms)
        self.norm = RMSNorm(self.norm)
        shape = (1, max_cache, attn.kv_heads, attn.head_dim)
        for i in range(self.num_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype))
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype))
        if custom_ops:
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers torch.ops.llama.*)

    def forward(self, inputs_embeds: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        h = inputs_embeds
        s = h.shape[1]
        cos, sin = self.rope(input_pos[None], h.dtype)
        if self.custom_ops:
            start = input_pos[0].item()
            torch._check(start >= 0)
            torch._check(start + s <= self.max_cache)
        else:
            # key j is visible to query i when j <= input_pos[i]
            visible = torch.arange(self.max_cache, device=h.device)[None, :] <= input_pos[:, None]
        for i in range(self.num_layers):
            attn = self.attns[i]
            q, k, v = attn.project(self.input_norms[i](h), cos, sin, infer_seq=True)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [1, T, heads, D]
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            if self.custom_ops:
                torch.ops.llama.update_cache(k, k_cache, start)
                torch.ops.llama.update_cache(v, v_cache, start)
                out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0, True)
            else:
                k_cache.index_copy_(1, input_pos, k)
                v_cache.index_copy_(1, input_pos, v)
                out = self._masked_attention(attn, q, k_cache, v_cache, visible)
            h = h + attn.o_proj(out.reshape(1, -1, attn.heads * attn.head_dim))  # (-1: a view XNNPACK takes)
            h = h + self.mlps[i](self.post_norms[i](h))
        if self.last_logits:  # what generation reads: no lm_head over the whole prompt
            h = h[:, -1:]
        return self.lm_head(self.norm(h)).float()

    @staticmethod
    def _masked_attention(attn: _Attention, q, k_cache, v_cache, visible) -> torch.Tensor:
        """[1, T, heads, D] attention of q over the whole cache, positions not visible masked out. 3-D ``bmm`` on
        the batch of one, as 4-D ``matmul`` lowers to an ``expand_copy`` of the whole cache per product."""
        q, k, v = q[0].transpose(0, 1), k_cache[0].transpose(0, 1), v_cache[0].transpose(0, 1)  # [heads, *, D]
        groups = attn.heads // attn.kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=0)
            v = v.repeat_interleave(groups, dim=0)
        scores = torch.bmm(q, k.transpose(1, 2)) * attn.scale
        scores = torch.where(visible[None], scores, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.bmm(probs, v).transpose(0, 1)[None]
