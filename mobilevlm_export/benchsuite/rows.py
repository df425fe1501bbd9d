"""The suite's rows: backend x recipe, ours and the peers, each with a name ``--only`` selects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import RECIPES_DIR

# kinds: how a row is built and timed
EAGER, OURS, EXPORT_LLM, ORT_INT4 = "eager", "ours", "export_llm", "ort_int4"
# the suite-derived recipe of our ExecuTorch 8da4w at export_llm's other example group size (see derived_recipe)
G128 = "snapdragon-8da4w-g128"


@dataclass(frozen=True)
class Row:
    name: str  # what --only selects
    kind: str  # EAGER | OURS | EXPORT_LLM | ORT_INT4
    backend: str  # the table's label
    recipe: str  # ours: the recipe (recipes/NAME.toml, or G128); peers: their scheme in words
    precision: str
    target: str | None = None  # ours: `build --target`
    group_size: int | None = None  # int4 weights: the group (block) size
    decoder_only: bool = False  # peers: no vision encoder, text-only prompts
    versus: str | None = None  # ours: the export_llm row at the same group size

    def to_dict(self) -> dict:
        return asdict(self)


ET = "ExecuTorch/XNNPACK"
ORT = "ONNX Runtime"
ROWS = (
    Row("eager-fp32", EAGER, "PyTorch eager", "fp32 (the reference)", "fp32"),
    Row("onnx-fp32", OURS, ORT, "onnx-fp32", "fp32", target="onnx"),
    Row("orin-int4", OURS, ORT, "orin-int4", "int4", target="orin", group_size=128),
    Row("et-fp32", OURS, ET, "snapdragon-fp32", "fp32", target="snapdragon"),
    Row("et-8da4w", OURS, ET, "snapdragon-8da4w", "8da4w", target="snapdragon", group_size=64),
    Row("et-8da4w-g32", OURS, ET, "snapdragon-8da4w-g32", "8da4w", target="snapdragon", group_size=32,
        versus="export_llm-g32"),
    Row("et-8da4w-g128", OURS, ET, G128, "8da4w", target="snapdragon", group_size=128, versus="export_llm-g128"),
    Row("export_llm-g32", EXPORT_LLM, "ExecuTorch export_llm", "8da4w g32, fp32 embedding", "8da4w", group_size=32,
        decoder_only=True),
    Row("export_llm-g128", EXPORT_LLM, "ExecuTorch export_llm", "8da4w g128, fp32 embedding", "8da4w",
        group_size=128, decoder_only=True),
    Row("ort-int4-b32", ORT_INT4, "ONNX Runtime MatMulNBits", "int4 block 32 on onnx-fp32's decoder", "int4",
        group_size=32, decoder_only=True),
)
BY_NAME = {r.name: r for r in ROWS}


def select(only: str | list[str] | None) -> list[Row]:
    """The rows ``--only NAME,...`` names, in the suite's order (all when None); ``UserError`` naming an
    unknown one."""
    if not only:
        return list(ROWS)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise UserError(f"--only {','.join(unknown) or '(empty)'}: unknown (known: {', '.join(BY_NAME)})")
    return [r for r in ROWS if r.name in names]


def derived_recipe() -> str:
    """The text of ``G128``: snapdragon-8da4w-g32 with every group of 32 made 128 (decoder linears, lm_head and
    the int4 embedding; the vision encoder stays 8da8w), so our ExecuTorch program meets export_llm at its other
    example group size. Written into the suite's cache; not a shipped recipe."""
    text = (RECIPES_DIR / "snapdragon-8da4w-g32.toml").read_text()
    if text.count("group_size = 32") < 2 or 'name = "snapdragon-8da4w-g32"' not in text:
        raise UserError("recipes/snapdragon-8da4w-g32.toml changed form: the suite cannot derive its g128 variant")
    body = text.replace("group_size = 32", "group_size = 128").replace(
        'name = "snapdragon-8da4w-g32"', f'name = "{G128}"')
    return ("# Derived by mobilevlm_export.benchsuite from snapdragon-8da4w-g32.toml: every group of 32 made 128, "
            "to meet\n# export_llm at group size 128. The tolerances are the g32 recipe's.\n" + body)


def recipe_text(row: Row, cache: Path) -> tuple[str, Path]:
    """(the recipe's text, the path to build with) of one of our rows; the derived recipe is written to
    ``cache/recipes/``."""
    if row.recipe == G128:
        path = cache / "recipes" / f"{G128}.toml"
        text = derived_recipe()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return text, path
    path = RECIPES_DIR / f"{row.recipe}.toml"
    return path.read_text(), path
