"""Reading and checking a MobileVLM ``config.json`` and resolving where the vision tower comes from.

The tower's shape is not in a MobileVLM config (only ``mm_hidden_size``): it comes from a local directory
(``mm_vision_tower`` when it is a path, or ``--vision-tower``) or, for the well-known
``openai/clip-vit-large-patch14-336``, from its published configuration. The original takes the tower's
*weights* from the checkpoint when "v2" is in ``mm_projector_type``, and reloads them from the tower directory
otherwise; ``--vision-tower`` always reloads (config, weights and image processor from that path).

Every check of the configuration files is here, before any weights are read: the keys the loader relies on are
declared with their types and bounds (``ConfigKeys`` with its ``RopeScalingKeys``, ``TowerKeys``, the image
processor's ``runtime.preprocess.ProcessorKeys``), then cross-field rules (``_check_decoder``, ``_check_tower``,
``check_tower_fits``); transformers' own strict config classes check the keys declared nowhere here. A violation is
a ``UserError`` naming the file and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import present
from mobilevlm_export.runtime.preprocess import MAX_IMAGE_SIDE, ImagePreprocess
from mobilevlm_export.schema import StrEnum, Where, bounded, parse_table, read_json

KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=768,
    ),
}
PROJECTOR_RE = re.compile(r"^(ldpnetv2|ldpnet|linear|mlp(\d+)x_gelu)$")
MAX_MLP_DEPTH = 16  # mlpNx_gelu: N linear layers
# sane upper bounds of the dims (several times the largest LLaMA/CLIP models): a larger value is a typo
MAX_WIDTH = 2**16  # hidden sizes
MAX_FFN = 2**18  # intermediate sizes
MAX_LAYERS = 2**10
MAX_HEADS = 2**10
MAX_VOCAB = 2**22
MAX_POSITIONS = 2**20


class SelectFeature(StrEnum):
    """Which tokens of the tower's selected layer the projector gets."""

    PATCH = "patch"  # the patch tokens (CLS dropped)
    CLS_PATCH = "cls_patch"


class AspectRatio(StrEnum):
    """How an image is fitted before the processor: padded to a square with the mean colour, or not."""

    PAD = "pad"
    SQUARE = "square"


@dataclass(frozen=True, kw_only=True)
class ConfigKeys:
    """The keys of a MobileVLM ``config.json`` the loader relies on, with their types and bounds; other keys pass
    through to ``LlamaConfig`` unchecked here. A key typed ``T`` with default ``None`` may be absent (the config
    class's default applies) but not null; one typed ``T | None`` may be null too."""

    hidden_size: int = bounded(min=1, max=MAX_WIDTH)
    intermediate_size: int = bounded(min=1, max=MAX_FFN)
    num_hidden_layers: int = bounded(min=1, max=MAX_LAYERS)
    num_attention_heads: int = bounded(min=1, max=MAX_HEADS)
    num_key_value_heads: int | None = bounded(None, min=1, max=MAX_HEADS)
    head_dim: int | None = bounded(None, min=1, max=MAX_WIDTH)  # None: hidden_size / num_attention_heads
    vocab_size: int = bounded(min=1, max=MAX_VOCAB)
    max_position_embeddings: int = bounded(None, min=1, max=MAX_POSITIONS)
    rms_norm_eps: float = bounded(None, min=0, max=1)
    rope_theta: float = bounded(None, min=1)
    rope_scaling: dict | None = None  # null: plain RoPE; else checked as ``RopeScalingKeys``
    hidden_act: str = None
    bos_token_id: int | None = bounded(None, min=0)
    eos_token_id: int | None = bounded(None, min=0)
    pad_token_id: int | None = bounded(None, min=0)
    mm_vision_tower: str
    mm_projector_type: str | None = None  # None or "": linear, the original's default
    mm_hidden_size: int = bounded(1024, min=1, max=MAX_WIDTH)
    mm_vision_select_layer: int = -2  # an index into the tower's hidden states; checked against the tower
    mm_vision_select_feature: SelectFeature = SelectFeature.PATCH
    image_aspect_ratio: AspectRatio = AspectRatio.SQUARE
    mm_use_im_patch_token: bool = True
    mm_use_im_start_end: bool = False


@dataclass(frozen=True)
class RopeScalingKeys:
    """The keys of ``rope_scaling`` every scaled RoPE reads (transformers' config only warns about them, then fails
    building the model); a type's other keys are left to transformers."""

    rope_type: str = None  # "type" in older configs; absent: default (no scaling)
    type: str = None
    factor: float = bounded(None, min=1)  # every type but the default needs one


@dataclass(frozen=True, kw_only=True)
class TowerKeys:
    """The keys of a CLIP vision tower's ``config.json`` (or its ``vision_config``) the loader relies on (typed as
    in ``ConfigKeys``)."""

    hidden_size: int = bounded(min=1, max=MAX_WIDTH)
    intermediate_size: int = bounded(min=1, max=MAX_FFN)
    num_hidden_layers: int = bounded(min=1, max=MAX_LAYERS)
    num_attention_heads: int = bounded(min=1, max=MAX_HEADS)
    image_size: int = bounded(min=1, max=MAX_IMAGE_SIDE)
    patch_size: int = bounded(min=1, max=MAX_IMAGE_SIDE)
    num_channels: int = bounded(None, min=3, max=3)  # the processor makes RGB
    hidden_act: str = None
    layer_norm_eps: float = bounded(None, min=0, max=1)


@dataclass(frozen=True)
class VisionTowerSource:
    """Where the tower's config, weights and image processor come from."""

    config: dict  # CLIPVisionConfig kwargs
    preprocess: ImagePreprocess
    weights_dir: Path | None  # None: the tower's weights are inside the checkpoint
    origin: str  # human-readable: which config and which weights were used


@dataclass(frozen=True)
class MobileVLMConfig:
    """A checked ``config.json``: ``raw`` has all its keys (those of ``ConfigKeys`` as parsed: numbers of float
    keys as floats), the fields the loader uses are typed."""

    path: Path
    raw: dict = field(repr=False)
    projector_type: str
    mm_hidden_size: int
    vision_tower_name: str
    select_layer: int
    select_feature: str
    image_aspect_ratio: str
    use_im_patch_token: bool
    use_im_start_end: bool

    @property
    def hidden_size(self) -> int:
        return int(self.raw["hidden_size"])

    def text_config(self):
        """The decoder's ``LlamaConfig``: the same fields, ``model_type`` and mm_* keys aside."""
        from transformers import LlamaConfig

        keep = {k: v for k, v in self.raw.items() if not k.startswith("mm_") and k not in _NOT_LLAMA}
        return _hf_config(LlamaConfig, keep, self.path / "config.json")


_NOT_LLAMA = {  # besides the mm_* keys; the dtypes name how the files store the weights, which the loader casts
    "torch_dtype",
    "dtype",
    "model_type",
    "architectures",
    "vision_tower_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "_name_or_path",
    "transformers_version",
    "auto_map",
}


def read_config(ckpt: str | Path) -> MobileVLMConfig:
    """Parse and check ``CKPT/config.json`` (see the module doc). Raises ``UserError`` naming the file and key."""
    path = Path(ckpt)
    if not path.exists():
        raise UserError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    cfg_path = path / "config.json"
    if not present(cfg_path):  # (anything else there, a FIFO included, is refused by read_json)
        raise UserError(f"{cfg_path}: missing (a MobileVLM checkpoint directory needs config.json)")
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    if not raw.get("mm_vision_tower"):
        raise UserError(
            f"{cfg_path}: no key 'mm_vision_tower': not a MobileVLM (vision-language) checkpoint"
        )
    bad = Where(str(cfg_path)).bad
    keys = parse_table(ConfigKeys, raw, "", bad, allow_unknown=True)
    _check_decoder(keys, bad)
    cfg = MobileVLMConfig(
        path=path,
        raw={**raw, **{k: getattr(keys, k) for k in _names(ConfigKeys) if k in raw}},  # numbers as parsed
        projector_type=keys.mm_projector_type or "linear",
        mm_hidden_size=keys.mm_hidden_size,
        vision_tower_name=keys.mm_vision_tower,
        select_layer=keys.mm_vision_select_layer,
        select_feature=keys.mm_vision_select_feature.value,
        image_aspect_ratio=keys.image_aspect_ratio.value,
        use_im_patch_token=keys.mm_use_im_patch_token,
        use_im_start_end=keys.mm_use_im_start_end,
    )
    cfg.text_config()  # transformers' checks of the other keys, now rather than after reading the weights
    return cfg


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_decoder(k: ConfigKeys, bad) -> None:
    """The cross-field rules of ``config.json``: attention heads that split the hidden size into even (RoPE) head
    dims, KV heads that group them, a known activation and RoPE scaling, special token ids inside the vocabulary, a
    known projector fed the tokens it takes."""
    if k.hidden_size % k.num_attention_heads:
        raise bad("num_attention_heads", f"= {k.num_attention_heads} does not divide hidden_size {k.hidden_size}")
    head_dim = k.head_dim or k.hidden_size // k.num_attention_heads
    if head_dim % 2:
        key = "head_dim" if k.head_dim else "num_attention_heads"
        raise bad(key, f"= {getattr(k, key)} gives an odd head dim {head_dim} (RoPE needs it even)")
    if k.num_key_value_heads is not None and k.num_attention_heads % k.num_key_value_heads:
        raise bad("num_key_value_heads",
                  f"= {k.num_key_value_heads} does not divide num_attention_heads {k.num_attention_heads}")
    _check_activation(k.hidden_act, "hidden_act", bad)
    if k.rope_scaling is not None:
        _check_rope_scaling(k.rope_scaling, bad)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token = getattr(k, key)
        if token is not None and token >= k.vocab_size:
            raise bad(key, f"= {token} is outside the vocabulary (vocab_size {k.vocab_size})")
    proj = k.mm_projector_type or "linear"
    match = PROJECTOR_RE.match(proj)
    if not match:
        raise bad("mm_projector_type", f"is '{proj}'; known: ldpnetv2, ldpnet, mlpNx_gelu (e.g. mlp2x_gelu), linear")
    if match.group(2) and not 1 <= int(match.group(2)) <= MAX_MLP_DEPTH:
        raise bad("mm_projector_type", f"is '{proj}'; mlpNx_gelu takes N in [1, {MAX_MLP_DEPTH}]")
    if proj.startswith("ldpnet") and k.mm_vision_select_feature != SelectFeature.PATCH:
        raise bad("mm_vision_select_feature", f"is '{k.mm_vision_select_feature}'; the {proj} projector pools the "
                                              "patch grid, so it takes 'patch' (no CLS token)")


def _check_rope_scaling(table: dict, bad) -> None:
    """``rope_scaling`` names a RoPE type transformers implements, and a factor unless it is the default."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = parse_table(RopeScalingKeys, table, "rope_scaling", bad, allow_unknown=True)
    kind = rope.rope_type or rope.type or "default"
    if kind != "default" and kind not in ROPE_INIT_FUNCTIONS:
        raise bad("rope_scaling.rope_type", f"is {kind!r}; known: default, {', '.join(ROPE_INIT_FUNCTIONS)}")
    if kind != "default" and rope.factor is None:
        raise bad("rope_scaling.factor", f"is missing (rope type {kind!r} needs one)")


def _check_activation(act: str | None, key: str, bad) -> None:
    """``act`` (``None``: the config class's default) is an activation transformers knows."""
    from transformers.activations import ACT2FN

    if act is not None and act not in ACT2FN:
        raise bad(key, f"is {act!r}; known: {', '.join(sorted(ACT2FN))}")


def _hf_config(cls: type, kwargs: dict, path: Path):
    """``cls(**kwargs)``, a transformers config class whose strict fields check the keys declared nowhere here; its
    failure is a ``UserError`` naming ``path``."""
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers validates field types (its strict dataclasses)
        raise UserError(f"{path}: {exc}") from None


def resolve_vision_tower(cfg: MobileVLMConfig, override: str | Path | None = None) -> VisionTowerSource:
    """Find the tower's config/weights/processor, following the original's choices (see module doc)."""
    pad = cfg.image_aspect_ratio == AspectRatio.PAD
    if override is not None:
        tower_dir = Path(override)
        if not tower_dir.is_dir():
            raise UserError(f"--vision-tower {tower_dir}: not a directory")
        config, pre = _read_tower_dir(tower_dir, pad, "--vision-tower")
        return VisionTowerSource(config, pre, tower_dir, f"--vision-tower {tower_dir} (config and weights)")

    name = cfg.vision_tower_name
    from_checkpoint = "v2" in cfg.projector_type
    candidates = [Path(name)] if Path(name).is_absolute() else [cfg.path / name, Path(name)]
    tower_dir = next((p for p in candidates if p.is_dir()), None)
    if tower_dir is not None:
        config, pre = _read_tower_dir(tower_dir, pad, "mm_vision_tower")
        if from_checkpoint:
            return VisionTowerSource(config, pre, None, f"config from {tower_dir}, weights from the checkpoint")
        return VisionTowerSource(config, pre, tower_dir, f"config and weights from {tower_dir}")
    if name in KNOWN_TOWERS:
        pre = ImagePreprocess(pad_to_square=pad)
        return VisionTowerSource(
            dict(KNOWN_TOWERS[name]), pre, None, f"published config of {name}, weights from the checkpoint"
        )
    raise UserError(
        f"{cfg.path / 'config.json'}: key 'mm_vision_tower' is '{name}', which is neither a local directory "
        f"nor a known tower ({', '.join(KNOWN_TOWERS)}); pass --vision-tower PATH"
    )


def check_tower_fits(cfg: MobileVLMConfig, tower: VisionTowerSource) -> None:
    """The checkpoint fits the resolved tower: its projector input is the tower's width, and its select layer one of
    the tower's hidden states (the embeddings and one per layer; negative indices count from the last, as in
    Python). ``UserError`` names config.json and the key."""
    cfg_path = cfg.path / "config.json"
    width, layers = tower.config["hidden_size"], tower.config["num_hidden_layers"]
    if width != cfg.mm_hidden_size:
        raise UserError(f"{cfg_path}: key 'mm_hidden_size' is {cfg.mm_hidden_size} but the vision tower "
                        f"({tower.origin}) has hidden_size {width}")
    if not -(layers + 1) <= cfg.select_layer <= layers:
        raise UserError(f"{cfg_path}: key 'mm_vision_select_layer' is {cfg.select_layer} but the vision tower "
                        f"({tower.origin}) has {layers} layers: it must be in [{-(layers + 1)}, {layers}]")


def _read_tower_dir(tower_dir: Path, pad: bool, flag: str) -> tuple[dict, ImagePreprocess]:
    """A tower directory's CLIPVisionConfig kwargs (checked) and image processor (its crop the tower's image size)."""
    from transformers import CLIPVisionConfig

    cfg_path = tower_dir / "config.json"
    if not present(cfg_path):
        raise UserError(f"{flag} {tower_dir}: missing config.json")
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    nested = "vision_config" in raw  # a full CLIPModel config nests the vision part
    vision = raw["vision_config"] if nested else raw
    bad = Where(str(cfg_path)).bad
    keys = parse_table(TowerKeys, vision, "vision_config" if nested else "", bad, allow_unknown=True)
    _check_tower(keys, "vision_config." if nested else "", bad)
    skip = ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype")
    config = {k: v for k, v in vision.items() if not k.startswith("_") and k not in skip}
    config.update({k: getattr(keys, k) for k in _names(TowerKeys) if k in config})  # numbers as parsed
    _hf_config(CLIPVisionConfig, config, cfg_path)  # transformers' checks of the other keys
    pre_path = tower_dir / "preprocessor_config.json"
    if not present(pre_path):  # (a FIFO or device there is refused by read_json, not taken for absent)
        return config, ImagePreprocess(crop_size=keys.image_size, shortest_edge=keys.image_size, pad_to_square=pad)
    pre = ImagePreprocess.from_preprocessor_config(pre_path, pad)
    if pre.crop_size != keys.image_size:
        raise UserError(f"{pre_path}: key 'crop_size' is {pre.crop_size} but the vision tower's image_size is "
                        f"{keys.image_size} ({cfg_path})")
    return config, pre


def _check_tower(k: TowerKeys, prefix: str, bad) -> None:
    """The cross-field rules of a tower config: heads that split its width, patches no larger than the image."""
    if k.hidden_size % k.num_attention_heads:
        raise bad(f"{prefix}num_attention_heads",
                  f"= {k.num_attention_heads} does not divide hidden_size {k.hidden_size}")
    if k.patch_size > k.image_size:
        raise bad(f"{prefix}patch_size", f"= {k.patch_size} is larger than image_size {k.image_size}")
    _check_activation(k.hidden_act, f"{prefix}hidden_act", bad)
