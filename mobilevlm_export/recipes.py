"""Recipes (``recipes/<target>-*.toml``): what to build and the parity each build must meet, validated on load.

```toml
[recipe]
name = "snapdragon-8da4w"
target = "snapdragon"      # a registered target (mobilevlm_export.targets)
precision = "8da4w"        # the build's precision label; the target says which it builds
fused_image_encoder = true # one image_encoder graph (tower + projector) instead of vision_encoder + projector

[tolerances.default]       # applies to every graph output without its own entry
max_abs = 1e-4
cosine_min = 0.99999

[tolerances.logits]        # per output name (``present`` covers present.{i}.key/value)
max_abs = 1e-4
top1_min = 1.0

[e2e]
token_agreement_min = 1.0  # fraction of (image, question) pairs whose greedy tokens equal the reference's
max_new_tokens = 8

[quantize.decoder]         # per part: a graph name (image_encoder, vision_encoder, projector, embed_tokens,
scheme = "8da4w"           # decoder) or lm_head (the decoder's output layer); schemes: schema.Precision
group_size = 64            # power of two >= 16; absent: the target's default
algorithm = "hqq"          # schema.QuantAlgorithm; the target says which it runs

[executorch]               # the target's own typed section (targets/<target>.py: recipe_options)
max_cache = 512
```
Parts without a ``[quantize.PART]`` table keep the build's float precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.schema import (
    Precision,
    QuantSpec,
    Where,
    bounded,
    parse_table,
    read_named_toml,
    shipped_dir,
    to_table,
)
from mobilevlm_export.targets import Target, find_target, registry

RECIPES_DIR = shipped_dir("recipes")  # the repository's recipes/, shipped in the wheel as package data
SECTIONS = ("recipe", "tolerances", "e2e", "quantize")


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = bounded(None, min=0)
    mean_abs: float | None = bounded(None, min=0)
    cosine_min: float | None = bounded(None, min=-1, max=1)
    top1_min: float | None = bounded(None, min=0, max=1)
    kl_max: float | None = bounded(None, min=0)  # logits: mean KL(reference || artifact) per position, nats


@dataclass(frozen=True)
class E2E:
    token_agreement_min: float = bounded(1.0, min=0, max=1)
    max_new_tokens: int = bounded(8, min=1)


@dataclass(frozen=True)
class RecipeHeader:
    target: str
    precision: Precision
    name: str = ""
    fused_image_encoder: bool = False
    notes: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    precision: Precision
    fused_image_encoder: bool = False
    default_tolerance: Tolerance = Tolerance()
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    e2e: E2E = E2E()
    quantize: dict[str, QuantSpec] = field(default_factory=dict)
    options: object = None  # the target's typed section, or None
    options_section: str | None = None  # that section's name (``Target.recipe_section``)
    source: str = ""
    notes: str = ""

    def tolerance(self, output: str) -> Tolerance:
        """The tolerance of ``output`` (``present.3.key`` matches an entry named ``present``)."""
        if output in self.tolerances:
            return self.tolerances[output]
        return self.tolerances.get(output.split(".")[0], self.default_tolerance)

    def quant(self, part: str) -> QuantSpec:
        """The quantization of ``part`` (absent: kept in the build's float precision)."""
        return self.quantize.get(part, QuantSpec())

    def to_dict(self) -> dict:
        """The recipe in its TOML form (what ``from_dict`` and ``load_recipe`` read)."""
        d = {"recipe": to_table(RecipeHeader(self.target, self.precision, self.name, self.fused_image_encoder,
                                             self.notes)),
             "tolerances": {"default": to_table(self.default_tolerance),
                            **{k: to_table(v) for k, v in self.tolerances.items()}},
             "e2e": to_table(self.e2e), "quantize": {k: to_table(v) for k, v in self.quantize.items()}}
        if self.options_section and self.options is not None:
            d[self.options_section] = to_table(self.options)
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest.json") -> Recipe:
        return parse_recipe(data, source)


def parse_recipe(data: dict, source: str, target: Target | None = None) -> Recipe:
    """A validated ``Recipe`` from the TOML form, for ``target`` (None: the registered target it names);
    ``UserError`` names ``source`` and the key at fault."""
    where = Where(source)
    bad = where.bad
    if not isinstance(data, dict):
        raise bad("recipe", "must be a table")
    target_name = (data.get("recipe") or {}).get("target") if isinstance(data.get("recipe"), dict) else None
    if target is None:
        target = find_target(target_name)
        if target is None:
            raise bad("recipe.target", f"is {target_name!r}; known: {', '.join(registry())}")
    elif target_name != target.name:
        raise bad("recipe.target", f"is {target_name!r}, not {target.name!r} (a recipe of another target)")
    sections = (*SECTIONS, *([target.recipe_section] if target.recipe_section else []))
    for key in data:
        if key not in sections:
            raise bad(key, f"is not a section of a {target.name} recipe ({', '.join(sections)})")
    head = parse_table(RecipeHeader, data.get("recipe", {}), "recipe", bad)
    if head.precision not in target.precisions:
        raise bad("recipe.precision", f"is {head.precision.value!r}; target {target.name} builds: "
                                      f"{', '.join(p.value for p in target.precisions)}")
    tols_table = data.get("tolerances", {})
    if not isinstance(tols_table, dict):
        raise bad("tolerances", "must be a table")
    tols = {out: parse_table(Tolerance, spec, f"tolerances.{out}", bad) for out, spec in tols_table.items()}
    quant_table = data.get("quantize", {})
    if not isinstance(quant_table, dict):
        raise bad("quantize", "must be a table")
    quantize = {}
    for part, spec in quant_table.items():
        allowed = target.quantize_parts.get(part)
        if allowed is None:
            known = ", ".join(target.quantize_parts) or "none"
            raise bad(f"quantize.{part}", f"is not a part target {target.name} quantizes (known: {known})")
        q = parse_table(QuantSpec, spec, f"quantize.{part}", bad)
        if q.scheme not in allowed:
            raise bad(f"quantize.{part}.scheme", f"is {q.scheme.value!r}; target {target.name} runs "
                                                 f"{', '.join(p.value for p in allowed)} for {part}")
        if q.algorithm not in target.algorithms:
            raise bad(f"quantize.{part}.algorithm", f"is {q.algorithm.value!r}; target {target.name} runs "
                                                    f"{', '.join(a.value for a in target.algorithms)}")
        quantize[part] = q
    options = None
    if target.recipe_options is not None:
        options = parse_table(target.recipe_options, data.get(target.recipe_section, {}), target.recipe_section,
                              bad)
    recipe = Recipe(
        name=head.name or Path(source).stem, target=target.name, precision=head.precision,
        fused_image_encoder=head.fused_image_encoder, default_tolerance=tols.pop("default", Tolerance()),
        tolerances=tols, e2e=parse_table(E2E, data.get("e2e", {}), "e2e", bad), quantize=quantize,
        options=options, options_section=target.recipe_section if options is not None else None, source=source,
        notes=head.notes,
    )
    target.check_recipe(recipe, bad)
    return recipe


def load_recipe(name_or_path: str | Path, target: Target | None = None) -> Recipe:
    """A recipe by name (``NAME.toml`` in ``target.recipes_dir``, the shipped ``recipes/`` without a target) or
    path, for ``target`` (None: the one it names). ``UserError`` names the file and key at fault."""
    directory = target.recipes_dir if target is not None else RECIPES_DIR
    path, data = read_named_toml(name_or_path, directory, "--recipe", "recipe")
    named = data.get("recipe", {}).get("target") if isinstance(data.get("recipe"), dict) else None
    if target is not None and isinstance(named, str) and named != target.name:
        raise UserError(f"--recipe {name_or_path}: is a {named} recipe, not {target.name}")
    return parse_recipe(data, str(path), target)
