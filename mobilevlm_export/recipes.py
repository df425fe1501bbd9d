"""Recipes (``recipes/*.toml``): what to build and the parity each build must meet, validated on load.

```toml
[recipe]
name = "onnx-fp32"
target = "onnx"            # onnx | orin | snapdragon
precision = "fp32"         # fp32 | fp16 | ...
fused_image_encoder = false

[tolerances.default]       # applies to every graph output without its own entry
max_abs = 1e-4
cosine_min = 0.99999

[tolerances.logits]        # per output name
max_abs = 1e-4
top1_min = 1.0

[e2e]
token_agreement_min = 1.0  # fraction of (image, question) pairs whose greedy tokens equal the reference's
max_new_tokens = 8

[quantize]                 # snapdragon: what each part of the model is stored/computed as
linear = "8da4w"           # decoder linears: fp32 | 8da4w | 8da8w (int8 dynamic activations, int4/int8 weights)
group_size = 32            # power of two >= 16; layers it does not divide fall back to per-channel 8da8w
lm_head = "8da4w"          # fp32 | 8da4w | 8da8w
embedding = "int4"         # fp32 | int8 | int4 (weight-only, grouped)
embedding_group_size = 32
vision = "8da8w"           # fp32 | 8da4w | 8da8w
qparams = "hqq_scale_only" # hqq_scale_only | affine

[executorch]
max_cache = 512            # static KV-cache positions (prompt + image tokens + answer)
attention = "custom_sdpa"  # custom_sdpa (llama.update_cache/custom_sdpa) | portable (index_copy_ + masked softmax)
kv_cache_init = "serialized"  # serialized (zeros stored in the .pte) | runtime (left to the runtime's zeroed arena)
logits = "last"            # last (text_decoder returns the last position's logits, as ExecuTorch's LLM export does:
                           # no lm_head over the whole prompt) | all (every position's, checked by verify)
```
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
TARGETS = {"onnx": ("fp32", "fp16"), "orin": ("fp32", "fp16"), "snapdragon": ("fp32", "8da4w", "8da8w")}
LINEAR_SCHEMES = ("fp32", "8da4w", "8da8w")
EMBEDDING_SCHEMES = ("fp32", "int8", "int4")


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    mean_abs: float | None = None
    cosine_min: float | None = None
    top1_min: float | None = None


@dataclass(frozen=True)
class Quantize:
    linear: str = "fp32"
    group_size: int = 32
    lm_head: str = "fp32"
    embedding: str = "fp32"
    embedding_group_size: int = 32
    vision: str = "fp32"
    qparams: str = "hqq_scale_only"

    @property
    def any(self) -> bool:
        return any(v != "fp32" for v in (self.linear, self.lm_head, self.embedding, self.vision))


@dataclass(frozen=True)
class ExecuTorchOptions:
    max_cache: int = 512
    attention: str = "custom_sdpa"
    kv_cache_init: str = "serialized"
    logits: str = "last"


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    precision: str
    fused_image_encoder: bool = False
    default_tolerance: Tolerance = Tolerance()
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    token_agreement_min: float = 1.0
    max_new_tokens: int = 8
    quantize: Quantize = Quantize()
    executorch: ExecuTorchOptions = ExecuTorchOptions()
    source: str = ""
    notes: str = ""

    def tolerance(self, output: str) -> Tolerance:
        """The tolerance of ``output`` (``present.3.key`` matches an entry named ``present``)."""
        if output in self.tolerances:
            return self.tolerances[output]
        return self.tolerances.get(output.split(".")[0], self.default_tolerance)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(**{**d, "default_tolerance": Tolerance(**d["default_tolerance"]),
                      "tolerances": {k: Tolerance(**v) for k, v in d["tolerances"].items()},
                      "quantize": Quantize(**d.get("quantize", {})),
                      "executorch": ExecuTorchOptions(**d.get("executorch", {}))})


_TOL_KEYS = set(Tolerance.__dataclass_fields__)


def read_named_toml(name_or_path: str | Path, directory: Path, flag: str, kind: str) -> tuple[Path, dict]:
    """A TOML data file by name (``directory/NAME.toml``) or path, and its parsed contents. ``UserError`` names
    the flag (``--recipe``) when there is no such file, the file when it is not valid TOML."""
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.toml")))
        raise UserError(f"{flag} {name_or_path}: no such {kind} (known: {known})")
    try:
        return path, tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (``recipes/NAME.toml``) or path. ``UserError`` names the file and key at fault."""
    path, data = read_named_toml(name_or_path, RECIPES_DIR, "--recipe", "recipe")

    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}: key '{key}' {why}")

    unknown = set(data) - {"recipe", "tolerances", "e2e", "quantize", "executorch"}
    if unknown:
        raise bad(sorted(unknown)[0], "is not a known section (recipe, tolerances, e2e, quantize, executorch)")
    r = data.get("recipe", {})
    for key in set(r) - {"name", "target", "precision", "fused_image_encoder", "notes"}:
        raise bad(f"recipe.{key}", "is unknown")
    target = r.get("target")
    if target not in TARGETS:
        raise bad("recipe.target", f"is {target!r}; known: {', '.join(TARGETS)}")
    precision = r.get("precision")
    if precision not in TARGETS[target]:
        raise bad("recipe.precision", f"is {precision!r}; target {target} can run: {', '.join(TARGETS[target])}")
    tols: dict[str, Tolerance] = {}
    for out, spec in data.get("tolerances", {}).items():
        if not isinstance(spec, dict):
            raise bad(f"tolerances.{out}", "must be a table")
        for key, value in spec.items():
            if key not in _TOL_KEYS:
                raise bad(f"tolerances.{out}.{key}", f"is unknown (known: {', '.join(sorted(_TOL_KEYS))})")
            if not isinstance(value, int | float) or value < 0:
                raise bad(f"tolerances.{out}.{key}", "must be a non-negative number")
        tols[out] = Tolerance(**{k: float(v) for k, v in spec.items()})
    e2e = data.get("e2e", {})
    for key in set(e2e) - {"token_agreement_min", "max_new_tokens"}:
        raise bad(f"e2e.{key}", "is unknown")
    agreement = e2e.get("token_agreement_min", 1.0)
    if not isinstance(agreement, int | float) or not 0 <= agreement <= 1:
        raise bad("e2e.token_agreement_min", "must be a number in [0, 1]")
    max_new = e2e.get("max_new_tokens", 8)
    if not isinstance(max_new, int) or max_new < 1:
        raise bad("e2e.max_new_tokens", "must be a positive integer")
    quantize = _quantize_section(data.get("quantize", {}), target, precision, bad)
    et = _executorch_section(data.get("executorch", {}), target, bad)
    return Recipe(
        name=str(r.get("name", path.stem)), target=target, precision=precision, quantize=quantize, executorch=et,
        fused_image_encoder=bool(r.get("fused_image_encoder", False)),
        default_tolerance=tols.pop("default", Tolerance()), tolerances=tols,
        token_agreement_min=float(agreement), max_new_tokens=max_new, source=str(path), notes=str(r.get("notes", "")),
    )


def _choice(section: dict, key: str, choices: tuple, default, bad, prefix: str):
    value = section.get(key, default)
    if value not in choices:
        raise bad(f"{prefix}.{key}", f"is {value!r}; known: {', '.join(map(str, choices))}")
    return value


def _power_of_two(section: dict, key: str, default: int, bad, prefix: str) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 16 or value & (value - 1):
        raise bad(f"{prefix}.{key}", f"is {value!r}; must be a power of two >= 16 (16, 32, 64, 128, ...)")
    return value


def _quantize_section(q: dict, target: str, precision: str, bad) -> Quantize:
    known = set(Quantize.__dataclass_fields__)
    for key in set(q) - known:
        raise bad(f"quantize.{key}", f"is unknown (known: {', '.join(sorted(known))})")
    if q and target != "snapdragon":
        raise bad("quantize", f"is not used by target {target}")
    default = precision if precision in LINEAR_SCHEMES else "fp32"
    linear = _choice(q, "linear", LINEAR_SCHEMES, default, bad, "quantize")
    if linear != default:
        raise bad("quantize.linear", f"is {linear!r} but recipe.precision is {precision!r}")
    return Quantize(
        linear=linear, group_size=_power_of_two(q, "group_size", 32, bad, "quantize"),
        lm_head=_choice(q, "lm_head", LINEAR_SCHEMES, linear, bad, "quantize"),
        embedding=_choice(q, "embedding", EMBEDDING_SCHEMES, "fp32", bad, "quantize"),
        embedding_group_size=_power_of_two(q, "embedding_group_size", 32, bad, "quantize"),
        vision=_choice(q, "vision", LINEAR_SCHEMES, "fp32", bad, "quantize"),
        qparams=_choice(q, "qparams", ("hqq_scale_only", "affine"), "hqq_scale_only", bad, "quantize"),
    )


def _executorch_section(e: dict, target: str, bad) -> ExecuTorchOptions:
    known = set(ExecuTorchOptions.__dataclass_fields__)
    for key in set(e) - known:
        raise bad(f"executorch.{key}", f"is unknown (known: {', '.join(sorted(known))})")
    if e and target != "snapdragon":
        raise bad("executorch", f"is not used by target {target}")
    max_cache = e.get("max_cache", ExecuTorchOptions.max_cache)
    if not isinstance(max_cache, int) or isinstance(max_cache, bool) or max_cache < 2:
        raise bad("executorch.max_cache", f"is {max_cache!r}; must be an integer >= 2")
    return ExecuTorchOptions(
        max_cache=max_cache,
        attention=_choice(e, "attention", ("custom_sdpa", "portable"), "custom_sdpa", bad, "executorch"),
        kv_cache_init=_choice(e, "kv_cache_init", ("serialized", "runtime"), "serialized", bad, "executorch"),
        logits=_choice(e, "logits", ("last", "all"), "last", bad, "executorch"),
    )


def default_recipe(target: str, precision: str) -> str:
    return f"{target}-{precision}"
