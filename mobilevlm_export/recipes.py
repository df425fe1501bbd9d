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
```
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
TARGETS = {"onnx": ("fp32", "fp16"), "orin": ("fp32", "fp16"), "snapdragon": ("fp32",)}


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    mean_abs: float | None = None
    cosine_min: float | None = None
    top1_min: float | None = None


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
                      "tolerances": {k: Tolerance(**v) for k, v in d["tolerances"].items()}})


_TOL_KEYS = set(Tolerance.__dataclass_fields__)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (``recipes/NAME.toml``) or path. ``UserError`` names the file and key at fault."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
        raise UserError(f"--recipe {name_or_path}: no such recipe (known: {known})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None

    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}: key '{key}' {why}")

    unknown = set(data) - {"recipe", "tolerances", "e2e"}
    if unknown:
        raise bad(sorted(unknown)[0], "is not a known section (recipe, tolerances, e2e)")
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
    return Recipe(
        name=str(r.get("name", path.stem)), target=target, precision=precision,
        fused_image_encoder=bool(r.get("fused_image_encoder", False)),
        default_tolerance=tols.pop("default", Tolerance()), tolerances=tols,
        token_agreement_min=float(agreement), max_new_tokens=max_new, source=str(path), notes=str(r.get("notes", "")),
    )


def default_recipe(target: str, precision: str) -> str:
    return f"{target}-{precision}"
