"""Image preprocessing of the vision tower, as MobileVLM applies it.

Pad to a square with the mean colour when ``image_aspect_ratio == "pad"`` (the original's ``expand2square``),
then the CLIP image processor: resize the shortest side (bicubic), centre crop, rescale by 1/255, normalize.
Implemented with PIL + numpy so the runtime can preprocess without transformers or the checkpoint; a test
compares it with transformers' ``CLIPImageProcessor`` on the same images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import open_regular
from mobilevlm_export.schema import Where, bounded, parse_table, read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_IMAGE_SIZE = 336  # ViT-L/14-336
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
PIL_RESAMPLE_MAX = 5  # PIL's resampling codes: 0 nearest ... 5 hamming
RGB_MAX = 255
MAX_IMAGE_SIDE = 4096  # the largest image edge a tower or processor config may ask for (ViT-L/14-336: 336)
MIN_STD = 1e-3  # normalizing by a smaller std divides by (almost) zero
# the largest input image side: padding to a square allocates side x side x 3 bytes (8192: at most 201 MB), and
# a larger photo gains nothing at the tower's 336-pixel input. Checked from the file's header, before decoding.
MAX_INPUT_SIDE = 8192


@dataclass(frozen=True)
class ProcessorKeys:
    """The keys of a HF ``preprocessor_config.json`` the preprocessing uses, with their bounds (``size`` and
    ``crop_size`` as plain numbers: ``_flat_sizes`` reads their dict forms). Other keys are ignored."""

    size: int = bounded(CLIP_IMAGE_SIZE, min=1, max=MAX_IMAGE_SIDE)
    crop_size: int | None = bounded(None, min=1, max=MAX_IMAGE_SIDE)  # None: size
    image_mean: tuple[float, ...] = bounded(CLIP_MEAN, min=0, max=1)  # of the rescaled pixels; also the pad colour
    image_std: tuple[float, ...] = bounded(CLIP_STD, min=MIN_STD)
    rescale_factor: float = bounded(1 / RGB_MAX, min=1e-6, max=1)
    resample: int = bounded(PIL_BICUBIC, min=0, max=PIL_RESAMPLE_MAX)


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
        """Read and check a HF ``preprocessor_config.json`` (legacy integer or dict forms of size/crop_size).
        ``UserError`` names the file and key of a value outside ``ProcessorKeys``' types and bounds, or of a mean
        or std that is not one number per channel."""
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a JSON object")
        bad = Where(str(path)).bad
        keys = parse_table(ProcessorKeys, _flat_sizes(data, bad), "", bad, allow_unknown=True)
        for key in ("image_mean", "image_std"):
            if len(getattr(keys, key)) != len(CLIP_MEAN):
                raise bad(key, f"has {len(getattr(keys, key))} values; must have {len(CLIP_MEAN)} (R, G, B)")
        return cls(
            crop_size=keys.size if keys.crop_size is None else keys.crop_size,
            shortest_edge=keys.size,
            mean=keys.image_mean,  # type: ignore[arg-type]
            std=keys.image_std,  # type: ignore[arg-type]
            rescale_factor=keys.rescale_factor,
            resample=keys.resample,
            pad_to_square=pad_to_square,
        )

    def __call__(self, image) -> np.ndarray:
        """PIL image (any mode) -> float32 array [3, crop_size, crop_size]."""
        from PIL import Image

        check_image_size(image.size, "image")  # (load_image checked a file's already; an image given directly)
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


def _flat_sizes(data: dict, bad) -> dict:
    """``data`` with ``size`` (``{"shortest_edge": N}``) and ``crop_size`` (``{"height": N, "width": N}``) as N."""
    out = dict(data)
    size, crop = data.get("size"), data.get("crop_size")
    if isinstance(size, dict):
        if "shortest_edge" not in size:
            raise bad("size", f"must give 'shortest_edge', got {size}")
        out["size"] = size["shortest_edge"]
    if isinstance(crop, dict):
        if "height" not in crop or crop.get("height") != crop.get("width"):
            raise bad("crop_size", f"must be square ({{'height': N, 'width': N}}), got {crop}")
        out["crop_size"] = crop["height"]
    return out


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


def check_image_size(size: tuple[int, int], where: str) -> None:
    """``UserError`` ("WHERE: ...", naming both dims) for an image wider or taller than ``MAX_INPUT_SIDE`` or
    with no pixels: what padding it to a square would allocate (side x side x 3 bytes) is bounded before any
    decoding or padding (a 168-byte 30000x1 PNG would otherwise pad to 30000 x 30000 x 3 = 2.7 GB)."""
    w, h = size
    if not (0 < w <= MAX_INPUT_SIDE and 0 < h <= MAX_INPUT_SIDE):
        raise UserError(f"{where}: the image is {w}x{h} pixels; each side must be 1..{MAX_INPUT_SIDE} (padded to a "
                        f"square it would take {max(w, h)}x{max(w, h)}); resize it first")


def load_image(path: str | Path, named: str = "--image"):
    """Open an image file as RGB. ``UserError`` ("NAMED PATH: why", ``named`` the flag or file key that gave the
    path) when it is missing, not a regular file (a FIFO, a device: never opened for reading), larger than
    ``MAX_INPUT_SIDE`` on a side (read from its header, before decoding: ``check_image_size``), or not a readable
    image, including one over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``: refused outright,
    where PIL only warns below twice the limit)."""
    import warnings

    from PIL import Image

    path = Path(path)
    where = f"{named} {path}"
    with open_regular(path, named) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    check_image_size(img.size, where)  # the header's size: nothing decoded yet
                    img.load()
                    return img.convert("RGB")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises decoding a file, it is not a readable image
            raise UserError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None
