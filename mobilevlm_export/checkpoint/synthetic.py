"""Write MobileVLM checkpoints with random weights in the real directory layout (for tests and benchmarks).

No download is involved: the tokenizer is copied from the bundled demo checkpoint, and the weights are made
here with a fixed seed. ``MOBILEVLM_V2_1_7B`` gives the full-size shapes (MobileLLaMA-1.4B + ViT-L/14-336 + LDPv2).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilevlm_export.checkpoint.config import KNOWN_TOWERS
from mobilevlm_export.checkpoint.model import PROJECTOR_PREFIX, TOWER_PREFIX
from mobilevlm_export.checkpoint.projector import build_projector

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Dims:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 128
    vocab: int = 0  # 0: the tokenizer's size
    max_positions: int = 1024
    vision_hidden: int = 32
    vision_layers: int = 3
    vision_heads: int = 2
    vision_intermediate: int = 64
    image_size: int = 336
    patch_size: int = 14
    vision_act: str = "quick_gelu"


TINY = Dims()
MOBILEVLM_V2_1_7B = Dims(hidden=2048, layers=24, heads=16, kv_heads=16, intermediate=5632, vocab=32000,
                         max_positions=2048, **{f"vision_{k}": v for k, v in dict(
                             hidden=1024, layers=24, heads=16, intermediate=4096).items()})


def demo_checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "demo" / "checkpoint"


def tower_config(d: Dims) -> dict:
    return dict(hidden_size=d.vision_hidden, intermediate_size=d.vision_intermediate,
                num_hidden_layers=d.vision_layers, num_attention_heads=d.vision_heads, image_size=d.image_size,
                patch_size=d.patch_size, hidden_act=d.vision_act, layer_norm_eps=1e-5, projection_dim=768)


def is_published_tower(d: Dims) -> bool:
    published = KNOWN_TOWERS["openai/clip-vit-large-patch14-336"]
    return all(tower_config(d)[k] == v for k, v in published.items())


def mobilevlm_config(d: Dims, projector: str, tower: str, vocab: int, **overrides) -> dict:
    cfg = {
        "architectures": ["MobileLlamaForCausalLM"], "model_type": "mobilevlm",
        "hidden_size": d.hidden, "intermediate_size": d.intermediate, "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads, "vocab_size": vocab,
        "max_position_embeddings": d.max_positions, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "torch_dtype": "float32",
        "mm_vision_tower": tower, "vision_tower_type": "clip", "mm_projector_type": projector,
        "mm_hidden_size": d.vision_hidden, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    }
    cfg.update(overrides)
    return cfg


def random_state_dict(d: Dims, projector: str, vocab: int, seed: int = 0, dtype=torch.float32) -> dict:
    """Random weights under the checkpoint's key names (decoder, projector, in-checkpoint tower copy)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    state: dict = {}
    llama = LlamaConfig(hidden_size=d.hidden, intermediate_size=d.intermediate, num_hidden_layers=d.layers,
                        num_attention_heads=d.heads, num_key_value_heads=d.kv_heads, vocab_size=vocab,
                        max_position_embeddings=d.max_positions, tie_word_embeddings=False)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(llama).state_dict().items()}
        tshapes = {k: v.shape for k, v in CLIPVisionModel(CLIPVisionConfig(**tower_config(d))).state_dict().items()}
    for k, shape in shapes.items():
        state[k] = _init(k, shape, dtype)
    for k, shape in tshapes.items():
        state[TOWER_PREFIX + k] = _init(k, shape, dtype)
    proj = build_projector(projector, d.vision_hidden, d.hidden)
    for k, v in proj.state_dict().items():
        state[PROJECTOR_PREFIX + k] = v.detach().to(dtype)
    return state


def _init(name: str, shape, dtype) -> torch.Tensor:
    if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight") or name.endswith(
            "layrnorm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape) * 0.02).to(dtype)


def write_checkpoint(out: Path, d: Dims = TINY, projector: str = "ldpnetv2", fmt: str = "safetensors",
                     shards: int = 1, tower: str = "auto", seed: int = 0, dtype=torch.float32,
                     **config_overrides) -> Path:
    """Write a checkpoint directory. ``tower``: "auto" puts the tower's config in ``out/vision_tower`` (with
    its weights when the projector is not v2, as the original reloads those) unless the dims are the
    published ViT-L/14-336, which is then named by its hub id.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = demo_checkpoint_dir()
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, out / f)
    from transformers import AutoTokenizer

    vocab = d.vocab or len(AutoTokenizer.from_pretrained(str(out)))
    state = random_state_dict(d, projector, vocab, seed, dtype)
    if tower == "auto":
        tower = "openai/clip-vit-large-patch14-336" if is_published_tower(d) else "vision_tower"
    if tower == "vision_tower":
        write_tower_dir(out / "vision_tower", d, state if "v2" not in projector else None)
    cfg = mobilevlm_config(d, projector, tower, vocab, **config_overrides)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_state_dict(state, out, fmt, shards)
    return out


def write_tower_dir(path: Path, d: Dims, state: dict | None) -> None:
    """A CLIP tower directory: config.json, preprocessor_config.json and, given ``state``, its weights."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", **tower_config(d)}, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": d.image_size, "size": d.image_size, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
        "feature_extractor_type": "CLIPFeatureExtractor"}, indent=2))
    if state is not None:
        tower = {"vision_model." + k[len(TOWER_PREFIX):]: v.contiguous() for k, v in state.items()
                 if k.startswith(TOWER_PREFIX)}
        save_file(tower, str(path / "model.safetensors"))


def save_state_dict(state: dict, out: Path, fmt: str, shards: int = 1) -> None:
    """Save as ``model.safetensors`` / ``pytorch_model.bin``, or N shards with an index json."""
    from safetensors.torch import save_file

    keys = list(state)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"

    def save(part: dict, name: str) -> None:
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in part.items()}, str(out / name), metadata={"format": "pt"})
        else:
            torch.save(part, out / name)

    if shards <= 1:
        save(state, f"{stem}.{ext}")
        return
    weight_map = {}
    per = -(-len(keys) // shards)
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        save(part, name)
        weight_map.update({k: name for k in part})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (out / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
