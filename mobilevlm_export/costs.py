"""What a build's model costs per token and per image, from the split graphs before quantization (build side).

Feeds ``profiles.DeviceProfile.predict``: the decoder's weight bytes read per generated token (decode is
bandwidth-bound), its ops per token (2 per multiply-add; prefill is compute-bound) and the image encoder's ops per
image. Linears only: attention's own matmuls and the embedding gather are left out.
"""

from __future__ import annotations


def model_costs(graphs: list, recipe, patches: int, default_group: int | None) -> dict:
    """``graphs``: the split (``graphs.split.Graph``); ``patches``: positions the vision tower runs on;
    ``default_group``: the target's group size for a quantized part that names none."""
    from torch import nn

    from mobilevlm_export.schema import Precision

    def linears(m: nn.Module) -> list[nn.Linear]:
        return [x for x in m.modules() if isinstance(x, nn.Linear)]

    def bytes_per_weight(part: str) -> float:
        if part in recipe.quantize:
            q = recipe.quantize[part]
            return q.scheme.weight_bytes(q.group_size or default_group)
        return (Precision.FP16 if recipe.precision == Precision.FP16 else Precision.FP32).weight_bytes(None)

    modules = {g.name: g.module for g in graphs}
    dec = modules["decoder"]
    head = dec.lm_head.weight.numel()
    body = sum(x.weight.numel() for x in linears(dec)) - head
    vision = sum(x.weight.numel() for name, m in modules.items() if name not in ("decoder", "embed_tokens")
                 for x in linears(m))
    return {"decoder_bytes_per_token": body * bytes_per_weight("decoder") + head * bytes_per_weight("lm_head"),
            "decoder_ops_per_token": 2.0 * (body + head), "vision_ops": 2.0 * vision * patches}
