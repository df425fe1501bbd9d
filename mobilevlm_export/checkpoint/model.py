"""The MobileVLM reference model (fp32 PyTorch) and its loader.

``load_checkpoint`` checks the configuration first (``checkpoint.config``), builds the three parts on the meta
device, then assigns the checkpoint's tensors (cast to ``dtype``) so a full-size model is never allocated twice.
Every expected tensor must be present with its shape and a floating-point dtype, and hold only finite values;
unexpected tensors are an error too, so a real checkpoint loads with zero missing and zero unexpected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilevlm_export.checkpoint.config import (
    MobileVLMConfig,
    VisionTowerSource,
    check_tower_fits,
    read_config,
    resolve_vision_tower,
)
from mobilevlm_export.checkpoint.projector import build_projector
from mobilevlm_export.checkpoint.weights import read_state_dict, weight_files
from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.preprocess import ImagePreprocess

TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
IM_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"
# Older transformers saved RoPE's inverse frequencies; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class MobileVLM(nn.Module):
    """Vision tower (CLIPVisionModel) -> projector -> LLaMA decoder. ``language_model`` is a LlamaForCausalLM."""

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, language_model: nn.Module,
                 select_layer: int, select_feature: str) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.language_model = language_model
        self.select_layer = select_layer
        self.select_feature = select_feature

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> hidden state of layer ``select_layer`` (CLS dropped for "patch"): [B, P, Dv]."""
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        return feats[:, 1:] if self.select_feature == "patch" else feats

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.image_features(pixel_values))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(input_ids)


@dataclass
class LoadReport:
    weight_files: list[str]
    tower: str  # where the tower's config and weights came from
    stored_dtypes: dict[str, int]  # dtype name -> tensor count, as stored in the checkpoint
    ignored: list[str] = field(default_factory=list)  # tensors present but deliberately unused
    load_seconds: float = 0.0


@dataclass
class LoadedCheckpoint:
    config: MobileVLMConfig
    tower: VisionTowerSource
    model: MobileVLM
    tokenizer: object
    preprocess: ImagePreprocess
    report: LoadReport

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)


def load_checkpoint(path: str | Path, vision_tower: str | Path | None = None,
                    dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """Load a MobileVLM checkpoint directory into the fp32 reference model. Raises ``UserError`` on bad input."""
    t0 = time.perf_counter()
    cfg = read_config(path)
    tower = resolve_vision_tower(cfg, vision_tower)
    check_tower_fits(cfg, tower)
    files = weight_files(cfg.path)
    origin: dict[str, Path] = {}
    state = read_state_dict(files, origin)
    stored: dict[str, int] = {}
    for t in state.values():
        stored[str(t.dtype).removeprefix("torch.")] = stored.get(str(t.dtype).removeprefix("torch."), 0) + 1

    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

    text_config = cfg.text_config()
    with torch.device("meta"):
        tower_model = CLIPVisionModel(CLIPVisionConfig(**tower.config))
        projector = build_projector(cfg.projector_type, cfg.mm_hidden_size, text_config.hidden_size)
        llm = LlamaForCausalLM(text_config)

    tower_state = {k[len(TOWER_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(TOWER_PREFIX)]}
    proj_state = {k[len(PROJECTOR_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(PROJECTOR_PREFIX)]}
    ignored = [k for k in state if k.endswith(_IGNORED_SUFFIXES)]
    for k in ignored:
        del state[k]
    ckpt_name = str(files[0]) if len(files) == 1 else f"{cfg.path} shards"
    if tower.weights_dir is not None:
        if tower_state:
            ignored.append(f"{len(tower_state)} tensors of the checkpoint's own tower copy ({TOWER_PREFIX}*)")
        tower_files = weight_files(tower.weights_dir)
        tower_state = _strip_tower_dir_keys(read_state_dict(tower_files))
        tower_source = str(tower_files[0] if len(tower_files) == 1 else tower.weights_dir)
        tower_prefix, tower_origin = "", {}
    else:
        tower_source, tower_prefix, tower_origin = ckpt_name, TOWER_PREFIX, origin

    _assign(tower_model, tower_state, dtype, tower_source, tower_prefix, tower_origin)
    _assign(projector, proj_state, dtype, ckpt_name, PROJECTOR_PREFIX, origin)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    _assign(llm, state, dtype, ckpt_name, "", origin, skip={"lm_head.weight"} if tied else set())
    if tied:
        llm.lm_head.weight = llm.model.embed_tokens.weight
    _materialize_buffers(tower_model, llm, text_config)

    model = MobileVLM(tower_model, projector, llm, cfg.select_layer, cfg.select_feature).eval()
    tokenizer = _load_tokenizer(cfg)
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        # the original resizes to len(tokenizer) after adding <im_patch>; only growth can happen for real
        # checkpoints, and a smaller tokenizer (random-weight test checkpoints) must not shrink the matrix
        llm.resize_token_embeddings(len(tokenizer))
    report = LoadReport([str(f) for f in files], tower.origin, stored, ignored, time.perf_counter() - t0)
    return LoadedCheckpoint(cfg, tower, model, tokenizer, tower.preprocess, report)


def checkpoint_state_dict(model: MobileVLM) -> dict:
    """The model's tensors under the original MobileVLM key names (the inverse of the loader's split)."""
    state = {k: v for k, v in model.language_model.state_dict().items()}
    state.update({PROJECTOR_PREFIX + k: v for k, v in model.projector.state_dict().items()})
    state.update({TOWER_PREFIX + k: v for k, v in model.vision_tower.state_dict().items()})
    return state


def _strip_tower_dir_keys(state: dict) -> dict:
    """A tower directory may hold a full CLIPModel (``vision_model.*`` beside ``text_model.*``)."""
    if any(k.startswith("vision_model.") for k in state):
        return {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    return state


def _assign(module: nn.Module, state: dict, dtype: torch.dtype, source: str, prefix: str,
            origin: dict[str, Path], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Load ``state`` (names without ``prefix``) into ``module`` as ``dtype``. ``UserError`` names the tensor
    (``prefix`` + name) and its file (``origin`` by full name, else ``source``) when one is missing, unexpected,
    of another shape, not floating point or holds NaN or Inf."""

    def file_of(k: str) -> str:
        return str(origin.get(prefix + k, source))

    expected = {k: v for k, v in module.state_dict().items() if k not in skip}
    for k, ref in expected.items():
        if k not in state:
            raise UserError(f"{source}: missing tensor '{prefix}{k}' (expected shape {list(ref.shape)})")
        if tuple(state[k].shape) != tuple(ref.shape):
            raise UserError(
                f"{file_of(k)}: tensor '{prefix}{k}' has shape {list(state[k].shape)}, expected {list(ref.shape)}"
            )
        if not state[k].is_floating_point():
            raise UserError(f"{file_of(k)}: tensor '{prefix}{k}' is {str(state[k].dtype).removeprefix('torch.')}; "
                            "weights must be floating point")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{source}: unexpected tensor '{prefix}{unexpected[0]}' ({len(unexpected)} in all)")
    # one tensor at a time (consumes ``state``): a safetensors tensor is read from disk here and its stored copy
    # dropped once cast, so the stored checkpoint and the model are never resident together
    cast = {}
    for k in list(state):
        cast[k] = state.pop(k).to(dtype)
        if not torch.isfinite(cast[k]).all():
            raise UserError(f"{file_of(k)}: tensor '{prefix}{k}' holds NaN or Inf values")
    module.load_state_dict(cast, strict=False, assign=True)


def _materialize_buffers(tower: nn.Module, llm: nn.Module, text_config) -> None:
    """Non-persistent buffers are not in checkpoints: compute them on the CPU after a meta-device build."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    llm.model.rotary_emb = LlamaRotaryEmbedding(config=text_config)
    emb = tower.embeddings
    emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    left = [n for n, t in [*llm.named_parameters(), *llm.named_buffers(), *tower.named_parameters(),
                           *tower.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading: {left[:5]}")


def _load_tokenizer(cfg: MobileVLMConfig):
    from transformers import AutoTokenizer

    if not any((cfg.path / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise UserError(f"{cfg.path}: no tokenizer (tokenizer.model or tokenizer.json)")
    try:
        # config= keeps transformers from re-reading config.json (whose model_type it does not know)
        tok = AutoTokenizer.from_pretrained(str(cfg.path), config=cfg.text_config(), use_fast=False)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad tokenizer file
        raise UserError(f"{cfg.path}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    if cfg.use_im_patch_token:
        tok.add_tokens([IM_PATCH], special_tokens=True)
    if cfg.use_im_start_end:
        tok.add_tokens([IM_START, IM_END], special_tokens=True)
    return tok
