"""Image preprocessing of the vision tower, as MobileVLM applies it.

Pad to a square with the mean colour when ``image_aspect_ratio == "pad"`` (the original's ``expand2square``),
then the CLIP image processor: resize the shortest side (bicubic), centre crop, rescale by 1/255, normalize.
Implemented with PIL + numpy so the runtime can preprocess without transformers or the checkpoint; a test
compares it with transformers' ``CLIPImageProcessor`` on the same images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_IMAGE_SIZE = 336  # ViT-L/14-336
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
RGB_MAX = 255


@dataclass(frozen=True)
class ImagePreprocess:
    """Parameters of the image processor. ``resample`` uses PIL's codes (3 = bicubic)."""

    crop_size: int = CLIP_IMAGE_SIZE
    shortest_edge: int = CLIP_IMAGE_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / RGB_MAX
    resample: int = PIL_BICUBIC
    pad_to_square: bool = True

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The background colour of the square padding: int(255 * mean) per channel, as the original."""
        return tuple(int(RGB_MAX * m) for m in self.mean)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImagePreprocess:
        return cls(
            crop_size=int(data["crop_size"]),
            shortest_edge=int(data["shortest_edge"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
            rescale_factor=float(data["rescale_factor"]),
            resample=int(data["resample"]),
            pad_to_square=bool(data["pad_to_square"]),
        )

    @classmethod
    def from_preprocessor_config(cls, path: Path, pad_to_square: bool) -> ImagePreprocess:
        """Read a HF ``preprocessor_config.json`` (legacy integer or dict forms of size/crop_size)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read the image processor config ({exc})") from None
        size = data.get("size", CLIP_IMAGE_SIZE)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise UserError(f"{path}: key 'size' must give 'shortest_edge', got {size}")
            size = size["shortest_edge"]
        crop = data.get("crop_size", size)
        if isinstance(crop, dict):
            if crop.get("height") != crop.get("width"):
                raise UserError(f"{path}: key 'crop_size' must be square, got {crop}")
            crop = crop["height"]
        return cls(
            crop_size=int(crop),
            shortest_edge=int(size),
            mean=tuple(data.get("image_mean", CLIP_MEAN)),  # type: ignore[arg-type]
            std=tuple(data.get("image_std", CLIP_STD)),  # type: ignore[arg-type]
            rescale_factor=float(data.get("rescale_factor", 1 / RGB_MAX)),
            resample=int(data.get("resample", PIL_BICUBIC)),
            pad_to_square=pad_to_square,
        )

    def __call__(self, image) -> np.ndarray:
        """PIL image (any mode) -> float32 array [3, crop_size, crop_size]."""
        from PIL import Image

        image = image.convert("RGB")
        if self.pad_to_square:
            image = _expand_to_square(image, self.pad_color)
        w, h = image.size
        short, long_ = (w, h) if w <= h else (h, w)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long_ / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if image.size != size:
            image = image.resize(size, resample=Image.Resampling(self.resample))
        arr = np.asarray(image, dtype=np.uint8)
        arr = _center_crop(arr, self.crop_size)
        # rescale in float64 then float32 normalize, as the HF processor computes it (bit-identical)
        x = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _expand_to_square(image, color):
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), color)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < size or w < size:  # pad with zeros like the HF processor, then crop
        ph, pw = max(size - h, 0), max(size - w, 0)
        arr = np.pad(arr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top : top + size, left : left + size]


def load_image(path: str | Path):
    """Open an image file as RGB. Unreadable or non-image files are a ``UserError`` naming the flag."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"--image {path}: not a readable image ({type(exc).__name__})") from None
