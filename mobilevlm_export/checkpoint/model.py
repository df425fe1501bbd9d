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
from mobilevlm_export.files import present, regular_file
from mobilevlm_export.runtime.preprocess import ImagePreprocess
from mobilevlm_export.runtime.prompt import IM_END, IM_PATCH, IM_START

TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
# the files AutoTokenizer.from_pretrained reads from a checkpoint directory (the vocabulary's first)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
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
    notes: list[str] = field(default_factory=list)  # warnings about the input (the vocabulary padded)


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
                    dtype: torch.dtype = torch.float32, warn=None) -> LoadedCheckpoint:
    """Load a MobileVLM checkpoint directory into the fp32 reference model. Raises ``UserError`` on bad input.
    ``warn(line)`` receives each warning (``LoadReport.notes``; default: one ``warning: ...`` line on stderr)."""
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
    notes = _fit_vocabulary(cfg, tokenizer, llm)
    for note in notes:
        (warn or _warn)(note)
    report = LoadReport([str(f) for f in files], tower.origin, stored, ignored, time.perf_counter() - t0, notes)
    return LoadedCheckpoint(cfg, tower, model, tokenizer, tower.preprocess, report)


def _warn(line: str) -> None:
    import sys

    print(f"warning: {line}", file=sys.stderr)


def _tokenizer_file(directory: Path) -> Path:
    """The file the tokenizer's vocabulary comes from (``tokenizer.model``, else ``tokenizer.json``)."""
    return next((directory / f for f in TOKENIZER_FILES[:2] if present(directory / f)), directory / "tokenizer.model")


def _fit_vocabulary(cfg: MobileVLMConfig, tokenizer, llm) -> list[str]:
    """Make the embedding and the lm_head as long as the tokenizer, never with random rows.

    A tokenizer longer than ``vocab_size`` only because the loader added the image tokens the config asks for
    (``mm_use_im_patch_token`` / ``mm_use_im_start_end``, as the original's ``load_pretrained_model`` adds them and
    then calls ``resize_token_embeddings``) is padded deterministically: each new row of the embedding and of the
    lm_head is the mean of the existing rows (the mean of transformers' ``mean_resizing`` without its random
    noise), so a new token's logit is the mean of the others and greedy decoding never picks it. The notes (one
    warning line each) name both numbers. Any other token past ``vocab_size`` (a tokenizer of another model, an
    added token) is a ``UserError`` naming the tokenizer, config.json and both numbers: its ids would index rows
    that do not exist. A shorter tokenizer (a vocabulary padded for alignment) is left as is."""
    rows = llm.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if size <= rows:
        return []
    added = {IM_PATCH} if cfg.use_im_patch_token else set()
    added |= {IM_START, IM_END} if cfg.use_im_start_end else set()
    extra = tokenizer.convert_ids_to_tokens(list(range(rows, size)))
    if not set(extra) <= added:
        odd = next(t for t in extra if t not in added)
        raise UserError(f"{_tokenizer_file(cfg.path)}: the tokenizer has {size} tokens but {cfg.path / 'config.json'} "
                        f"has vocab_size {rows} (token {odd!r} has id {rows + extra.index(odd)}, past the model's "
                        "embedding); use the checkpoint's own tokenizer")
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # resizing initialises new rows randomly:
        old_in = llm.get_input_embeddings().weight.mean(0)      # they are overwritten below, the RNG left as it was
        old_out = llm.get_output_embeddings().weight.mean(0)
        llm.resize_token_embeddings(size, mean_resizing=False)
        llm.get_input_embeddings().weight[rows:] = old_in
        llm.get_output_embeddings().weight[rows:] = old_out
    return [f"{_tokenizer_file(cfg.path)}: the tokenizer has {size} tokens ({', '.join(extra)} added for "
            f"config.json's mm_use_im_* keys) but {cfg.path / 'config.json'} has vocab_size {rows}: the embedding "
            f"and lm_head are padded to {size} rows with the mean of the existing rows (deterministic)"]


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

    if not any(present(cfg.path / f) for f in TOKENIZER_FILES[:2]):
        raise UserError(f"{cfg.path}: no tokenizer (tokenizer.model or tokenizer.json)")
    for f in TOKENIZER_FILES:  # each file from_pretrained may read: a FIFO there would hang it
        if present(cfg.path / f):
            regular_file(cfg.path / f)
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
