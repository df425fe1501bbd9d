"""Reading a MobileVLM ``config.json`` and resolving where the vision tower comes from.

The tower's shape is not in a MobileVLM config (only ``mm_hidden_size``): it comes from a local directory
(``mm_vision_tower`` when it is a path, or ``--vision-tower``) or, for the well-known
``openai/clip-vit-large-patch14-336``, from its published configuration. The original takes the tower's
*weights* from the checkpoint when "v2" is in ``mm_projector_type``, and reloads them from the tower directory
otherwise; ``--vision-tower`` always reloads (config, weights and image processor from that path).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.preprocess import ImagePreprocess

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


@dataclass(frozen=True)
class VisionTowerSource:
    """Where the tower's config, weights and image processor come from."""

    config: dict  # CLIPVisionConfig kwargs
    preprocess: ImagePreprocess
    weights_dir: Path | None  # None: the tower's weights are inside the checkpoint
    origin: str  # human-readable: which config and which weights were used

    @property
    def weights_from(self) -> str:
        return "checkpoint" if self.weights_dir is None else str(self.weights_dir)


@dataclass(frozen=True)
class MobileVLMConfig:
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
        try:
            return LlamaConfig(**keep)
        except Exception as exc:  # noqa: BLE001 - transformers validates field types (its strict dataclasses)
            raise UserError(f"{self.path / 'config.json'}: {exc}") from None


_NOT_LLAMA = {
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
    """Parse and check ``CKPT/config.json``. Raises ``UserError`` naming the file and key."""
    path = Path(ckpt)
    if not path.exists():
        raise UserError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: missing (a MobileVLM checkpoint directory needs config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    tower = raw.get("mm_vision_tower")
    if not tower:
        raise UserError(
            f"{cfg_path}: no key 'mm_vision_tower': not a MobileVLM (vision-language) checkpoint"
        )
    proj = raw.get("mm_projector_type") or "linear"  # the original's default
    if not PROJECTOR_RE.match(proj):
        raise UserError(
            f"{cfg_path}: key 'mm_projector_type' is '{proj}'; "
            "known: ldpnetv2, ldpnet, mlpNx_gelu (e.g. mlp2x_gelu), linear"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(raw.get(key), int):
            raise UserError(f"{cfg_path}: key '{key}' missing or not an integer")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise UserError(f"{cfg_path}: key 'mm_vision_select_feature' is '{feature}'; known: patch, cls_patch")
    return MobileVLMConfig(
        path=path,
        raw=raw,
        projector_type=proj,
        mm_hidden_size=int(raw.get("mm_hidden_size", 1024)),
        vision_tower_name=str(tower),
        select_layer=int(raw.get("mm_vision_select_layer", -2)),
        select_feature=feature,
        image_aspect_ratio=str(raw.get("image_aspect_ratio", "square")),
        use_im_patch_token=bool(raw.get("mm_use_im_patch_token", True)),
        use_im_start_end=bool(raw.get("mm_use_im_start_end", False)),
    )


def resolve_vision_tower(cfg: MobileVLMConfig, override: str | Path | None = None) -> VisionTowerSource:
    """Find the tower's config/weights/processor, following the original's choices (see module doc)."""
    pad = cfg.image_aspect_ratio == "pad"
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


def _read_tower_dir(tower_dir: Path, pad: bool, flag: str) -> tuple[dict, ImagePreprocess]:
    cfg_path = tower_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{flag} {tower_dir}: missing config.json")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path}: not valid JSON ({exc})") from None
    vision = raw.get("vision_config", raw)  # a full CLIPModel config nests the vision part
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    missing = [k for k in keys if k not in vision]
    if missing:
        raise UserError(f"{cfg_path}: vision config lacks key '{missing[0]}'")
    skip = ("architectures", "model_type", "transformers_version")
    config = {k: v for k, v in vision.items() if not k.startswith("_") and k not in skip}
    pre_path = tower_dir / "preprocessor_config.json"
    image_size = int(vision.get("image_size", 336))
    if pre_path.is_file():
        pre = ImagePreprocess.from_preprocessor_config(pre_path, pad)
    else:
        pre = ImagePreprocess(crop_size=image_size, shortest_edge=image_size, pad_to_square=pad)
    return config, pre
