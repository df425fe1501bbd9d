"""Checkpoint loading: every projector type, safetensors and sharded .bin, exact round trip of the tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CHECKPOINT_KINDS

from mobilevlm_export.checkpoint.config import read_config, resolve_vision_tower
from mobilevlm_export.checkpoint.model import (
    PROJECTOR_PREFIX,
    TOWER_PREFIX,
    checkpoint_state_dict,
    load_checkpoint,
)
from mobilevlm_export.checkpoint.projector import build_projector
from mobilevlm_export.checkpoint.records import model_dims
from mobilevlm_export.checkpoint.synthetic import TINY, write_checkpoint, write_tower_dir
from mobilevlm_export.checkpoint.weights import read_state_dict, weight_files

IMAGE_TOKENS = {"ldpnetv2": 144, "ldpnet": 144, "mlp2x_gelu": 576, "linear": 576}


def _read_independently(files) -> dict:
    """The files' tensors as the safetensors library and torch.load read them (not through our reader)."""
    from safetensors.torch import load_file

    state = {}
    for f in files:
        state.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, weights_only=True))
    return state


@pytest.mark.parametrize("projector,fmt,shards", CHECKPOINT_KINDS)
def test_load_round_trip_and_shapes(ckpt_factory, projector, fmt, shards):
    path = ckpt_factory(projector, fmt, shards)
    files = weight_files(path)
    assert len(files) == shards
    assert all(f.suffix == (".safetensors" if fmt == "safetensors" else ".bin") for f in files)
    stored = _read_independently(files)
    assert {k: (v.dtype, v.shape) for k, v in read_state_dict(files).items()} == {
        k: (v.dtype, v.shape) for k, v in stored.items()}
    ckpt = load_checkpoint(path)
    loaded = checkpoint_state_dict(ckpt.model)
    tower_in_ckpt = "v2" in projector
    expected = {k: v for k, v in stored.items() if tower_in_ckpt or not k.startswith(TOWER_PREFIX)}
    compared = {k: v for k, v in loaded.items() if tower_in_ckpt or not k.startswith(TOWER_PREFIX)}
    # zero missing, zero unexpected, identical values
    assert set(compared) == set(expected)
    for k, v in expected.items():
        assert torch.equal(compared[k], v), k
    assert ckpt.report.tower.endswith("weights from the checkpoint") == tower_in_ckpt

    d = model_dims(ckpt)
    assert (d.patches, d.image_tokens) == (576, IMAGE_TOKENS[projector])
    pixels = torch.randn(2, 3, 336, 336)
    with torch.inference_mode():
        feats = ckpt.model.image_features(pixels)
        embeds = ckpt.model.projector(feats)
    assert tuple(feats.shape) == (2, 576, TINY.vision_hidden)
    assert tuple(embeds.shape) == (2, IMAGE_TOKENS[projector], TINY.hidden)


def test_non_v2_tower_weights_come_from_tower_dir(ckpt_factory):
    """ldpnet reloads the tower from mm_vision_tower, as the original does; its in-checkpoint copy is unused."""
    path = ckpt_factory("ldpnet", "safetensors", 2)
    ckpt = load_checkpoint(path)
    tower_file = _read_independently(weight_files(path / "vision_tower"))
    for k, v in ckpt.model.vision_tower.state_dict().items():
        if k != "embeddings.position_ids":
            assert torch.equal(v, tower_file["vision_model." + k]), k
    assert any("tower copy" in s for s in ckpt.report.ignored)


def test_vision_tower_override_reloads_config_weights_and_processor(tmp_path, tiny_ckpt):
    torch.manual_seed(5)
    other = tmp_path / "tower"
    from mobilevlm_export.checkpoint.synthetic import random_state_dict

    write_tower_dir(other, TINY, random_state_dict(TINY, "ldpnetv2", 512, seed=7))
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (other / "preprocessor_config.json").write_text(json.dumps(cfg))
    base = load_checkpoint(tiny_ckpt)
    over = load_checkpoint(tiny_ckpt, vision_tower=other)
    assert over.report.tower.startswith("--vision-tower")
    assert over.preprocess.mean == (0.5, 0.5, 0.5)
    want = _read_independently(weight_files(other))["vision_model.embeddings.patch_embedding.weight"]
    assert torch.equal(over.model.vision_tower.embeddings.patch_embedding.weight, want)
    assert not torch.equal(base.model.vision_tower.embeddings.patch_embedding.weight, want)


def test_published_tower_config_for_known_name(tiny_ckpt, tmp_path):
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    raw["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    raw["mm_projector_type"] = "ldpnetv2"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    src = resolve_vision_tower(read_config(tmp_path))
    assert src.weights_dir is None and "published config" in src.origin
    assert (src.config["hidden_size"], src.config["num_hidden_layers"], src.config["patch_size"]) == (1024, 24, 14)
    assert src.config["hidden_act"] == "quick_gelu" and src.preprocess.crop_size == 336
    assert src.preprocess.pad_to_square  # image_aspect_ratio "pad"


def test_missing_im_patch_flag_adds_token_and_resizes(ckpt_factory):
    path = ckpt_factory("ldpnetv2", "safetensors", 1, mm_use_im_patch_token=None)
    raw = json.loads((path / "config.json").read_text())
    raw.pop("mm_use_im_patch_token")
    (path / "config.json").write_text(json.dumps(raw))
    ckpt = load_checkpoint(path)
    assert "<im_patch>" in ckpt.tokenizer.get_vocab()
    assert len(ckpt.tokenizer) == 513
    assert ckpt.model.language_model.get_input_embeddings().weight.shape[0] == 513


def test_fp16_checkpoint_is_upcast_to_fp32(tmp_path):
    path = write_checkpoint(tmp_path / "fp16", dtype=torch.float16)
    ckpt = load_checkpoint(path)
    assert ckpt.report.stored_dtypes == {"float16": len(read_state_dict(weight_files(path)))}
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())


@pytest.mark.parametrize("projector,keys", [
    ("ldpnetv2", ["mlp.mlp.0.weight", "mlp.mlp.2.bias", "peg.peg.0.weight", "peg.peg.0.bias"]),
    ("ldpnet", ["model.mlp.1.weight", "model.mlp.3.bias", "model.mb_block.1.block.0.0.weight",
                "model.mb_block.1.block.0.1.weight", "model.mb_block.1.block.1.fc1.weight",
                "model.mb_block.2.block.1.fc2.bias", "model.mb_block.2.block.2.0.weight",
                "model.mb_block.2.block.2.1.bias"]),
    ("mlp2x_gelu", ["0.weight", "0.bias", "2.weight", "2.bias"]),
    ("linear", ["weight", "bias"]),
])
def test_projector_key_names_match_the_original(projector, keys):
    state = build_projector(projector, 1024, 2048).state_dict()
    for k in keys:
        assert k in state, f"{PROJECTOR_PREFIX}{k}"
    if projector == "ldpnet":  # SE squeeze = make_divisible(2048 / 4, 8); no conv biases in dw/pw convs
        assert state["model.mb_block.1.block.1.fc1.weight"].shape == (512, 2048, 1, 1)
        assert "model.mb_block.1.block.0.0.bias" not in state
        assert len(state) == 4 + 2 * 10


def test_ldpnetv2_math():
    """LDPv2 = MLP -> 2x2 average pool of the 24x24 grid -> x + depthwise conv(x)."""
    torch.manual_seed(0)
    proj = build_projector("ldpnetv2", 8, 4)
    x = torch.randn(1, 576, 8)
    with torch.no_grad():
        y = proj.mlp(x).transpose(1, 2).reshape(1, 4, 24, 24)
        pooled = y.reshape(1, 4, 12, 2, 12, 2).mean((3, 5))
        want = (pooled + proj.peg.peg[0](pooled)).flatten(2).transpose(1, 2)
        np.testing.assert_allclose(proj(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
