"""The device profiles' predictions beside what was published: the fit of each profile's calibration.

``profiles.DeviceProfile.predict`` is a roofline scaled by two efficiency factors per profile, calibrated on
published figures (the comments of ``device_profiles/*.toml`` cite them). Here each published figure is set
against what its profile predicts for the published model's costs (``CALIBRATION``), and every profile predicts
for the costs our builds recorded (``predictions``).

Costs of a published 4-bit MobileVLM-1.7B: MobileLLaMA-1.4B's decoder linears (lm_head included) at ``Q4_K_BITS``
bits per weight, 2 ops per weight per token, and the vision tower + projector's linears over every patch position
(CLS included), the tower's last layer left out (MobileVLM reads the second-to-last layer), as
``costs.model_costs`` counts them for a build.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, Dims

Q4_K_BITS = 4.5  # llama.cpp q4_k: 4-bit weights with 6-bit scales and mins per 32, ~4.5 bits per weight
METRIC_LABELS = {"decode_tokens_per_s": "decode tok/s", "prefill_tokens_per_s": "prefill tok/s",
                 "vision_ms": "image encode ms"}
# from published-numbers: Llama 3.2 1B SpinQuant, as the snapdragon-8-gen-3 profile's comment counts it
LLAMA_3_2_1B_SPINQUANT = {"decoder_bytes_per_token": 0.75e9, "decoder_ops_per_token": 2.5e9, "vision_ops": 0.0}


def decoder_linear_weights(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> int:
    """Weights of a LLaMA decoder's linears, lm_head included (q, k, v, o, gate, up, down per layer)."""
    head_dim = hidden // heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate) + \
        hidden * vocab


def analytic_costs(d: Dims = MOBILEVLM_V2_1_7B, bits_per_weight: float = Q4_K_BITS, projector: str = "ldpnetv2",
                   vocab: int | None = None, select_layer: int = -2) -> dict:
    """``costs.model_costs``'s three figures for a checkpoint of dims ``d`` whose decoder linears are stored at
    ``bits_per_weight``, without building it: the vision tower's layers up to ``select_layer`` (MobileVLM's -2:
    the last layer is not run), the projector's linears counted on the meta device."""
    import torch
    from torch import nn

    from mobilevlm_export.checkpoint.projector import build_projector

    dec = decoder_linear_weights(d.hidden, d.intermediate, d.layers, d.heads, d.kv_heads, vocab or d.vocab)
    with torch.device("meta"):
        proj = sum(m.weight.numel() for m in build_projector(projector, d.vision_hidden, d.hidden).modules()
                   if isinstance(m, nn.Linear))
    layers = d.vision_layers + 1 + select_layer
    tower = layers * (4 * d.vision_hidden ** 2 + 2 * d.vision_hidden * d.vision_intermediate)
    positions = (d.image_size // d.patch_size) ** 2 + 1
    return {"decoder_bytes_per_token": dec * bits_per_weight / 8, "decoder_ops_per_token": 2.0 * dec,
            "vision_ops": 2.0 * (tower + proj) * positions}


@dataclass(frozen=True)
class Published:
    """One published figure a profile is calibrated on (or checked against)."""

    profile: str
    metric: str  # a key of DeviceProfile.predict's result
    value: float | tuple[float, float]  # a range where the source gives one
    model: str
    source: str
    costs: str = "mobilevlm-1.7b-q4"  # which costs the figure's model has (COSTS)


LLAMA_CPP = "llama.cpp docs/multimodal/MobileVLM.md"
PAPER = "MobileVLM paper (arXiv 2312.16886), abstract"
CALIBRATION = (
    Published("snapdragon-888", "decode_tokens_per_s", 14.1, "MobileVLM-1.7B q4_k, 4 threads", LLAMA_CPP),
    Published("snapdragon-888", "prefill_tokens_per_s", 19.6, "MobileVLM-1.7B q4_k, 4 threads", LLAMA_CPP),
    Published("snapdragon-888", "vision_ms", 21100, "MobileVLM-1.7B q4_k, 4 threads", LLAMA_CPP),
    Published("snapdragon-888", "decode_tokens_per_s", 21.5, "MobileVLM 1.7B, 4-bit", PAPER),
    Published("orin-agx-64gb", "decode_tokens_per_s", 65.3, "MobileVLM 1.7B, 4-bit", PAPER),
    Published("orin-agx-64gb", "decode_tokens_per_s", 65.6, "MobileVLM-1.7B q4_k, CUDA", LLAMA_CPP),
    Published("orin-agx-64gb", "prefill_tokens_per_s", (802, 1086), "MobileVLM-1.7B q4_k, CUDA", LLAMA_CPP),
    Published("orin-agx-64gb", "vision_ms", 300, "MobileVLM-1.7B q4_k, CUDA", LLAMA_CPP),
    Published("snapdragon-8-gen-3", "decode_tokens_per_s", 50.2, "Llama 3.2 1B SpinQuant (4-bit), OnePlus 12",
              "ExecuTorch examples/models/llama README", "llama-3.2-1b-spinquant"),
    Published("snapdragon-8-gen-3", "prefill_tokens_per_s", 260.5, "Llama 3.2 1B SpinQuant (4-bit), OnePlus 12",
              "ExecuTorch examples/models/llama README", "llama-3.2-1b-spinquant"),
)


def published_costs() -> dict[str, dict]:
    """The costs of each published model ``CALIBRATION`` names."""
    return {"mobilevlm-1.7b-q4": analytic_costs(), "llama-3.2-1b-spinquant": dict(LLAMA_3_2_1B_SPINQUANT)}


def _mid(value: float | tuple[float, float]) -> float:
    return (value[0] + value[1]) / 2 if isinstance(value, tuple) else float(value)


def calibration_fit(profiles_dir=None) -> list[dict]:
    """Each ``CALIBRATION`` figure beside its profile's prediction for the figure's model: predicted, published
    (a range's midpoint for the ratio) and predicted / published. A profile that is missing is skipped."""
    from mobilevlm_export.errors import UserError
    from mobilevlm_export.profiles import load_profile

    costs = published_costs()
    rows = []
    for p in CALIBRATION:
        try:
            profile = load_profile(p.profile if profiles_dir is None else profiles_dir / f"{p.profile}.toml")
        except UserError:
            continue
        predicted = profile.predict(**costs[p.costs])[p.metric]
        rows.append({"profile": p.profile, "metric": p.metric, "model": p.model, "source": p.source,
                     "published": list(p.value) if isinstance(p.value, tuple) else p.value,
                     "predicted": predicted, "ratio": round(predicted / _mid(p.value), 3),
                     "costs": {k: float(f"{v:.4g}") for k, v in costs[p.costs].items()},
                     "assumptions": profile.predict(**costs[p.costs])["assumptions"]})
    return rows


def profile_names() -> list[str]:
    """The device profiles shipped in ``device_profiles/``."""
    from mobilevlm_export.profiles import PROFILES_DIR

    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def predictions(rows: list[dict]) -> list[dict]:
    """Every shipped profile's prediction for each measured row of its target that recorded costs: ``{"row",
    "profile", "decode_tokens_per_s", "prefill_tokens_per_s", "vision_ms", "assumptions"}``, beside the row's
    host figures."""
    from mobilevlm_export.profiles import load_profile

    profiles = [load_profile(n) for n in profile_names()]
    out = []
    for row in rows:
        if not row.get("costs") or not row.get("target"):
            continue
        for prof in profiles:
            if prof.target == row["target"]:
                out.append({"row": row["name"], "profile": prof.name, **prof.predict(**row["costs"])})
    return out
