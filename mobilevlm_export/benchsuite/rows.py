"""The suite's rows: backend x recipe, ours and the peers, each with a name ``--only`` selects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import RECIPES_DIR

# kinds: how a row is built and timed. BEFORE: one of our rows as the package at an earlier commit made it (``--before
# REF``): its recipe file at that commit, built by that commit's code, then timed and measured as ours are
EAGER, OURS, EXPORT_LLM, ORT_INT4, BEFORE = "eager", "ours", "export_llm", "ort_int4", "before"
# Recipes the suite derives from a shipped one (written into its cache, not shipped): name -> (the shipped recipe,
# what changes: a [quantize.PART] table replaced whole, and what the change is, in words). The g128 variant meets
# export_llm at its other example group size; the others are the points of the 8da4w frontier that each differ from
# a shipped recipe on one axis (decoder group size, vision 8da8w vs 8da4w or fp32, embedding int4 vs int8).
G128 = "snapdragon-8da4w-g128"
HQQ4 = {"scheme": "8da4w", "algorithm": "hqq"}
DERIVED = {
    G128: ("snapdragon-8da4w-g32", {"decoder": {**HQQ4, "group_size": 128}, "lm_head": {**HQQ4, "group_size": 128},
                                    "embed_tokens": {"scheme": "int4", "group_size": 128, "algorithm": "hqq"}},
           "every group of 32 made 128 (decoder linears, lm_head, int4 embedding; the vision encoder stays 8da8w)"),
    "snapdragon-8da4w-g64": ("snapdragon-8da4w", {"decoder": {**HQQ4, "group_size": 64},
                                                  "lm_head": {**HQQ4, "group_size": 64}},
                             "the decoder linears and lm_head in groups of 64 (the default until 2026-12-06) instead "
                             "of 128"),
    "snapdragon-8da4w-vision8da4w": ("snapdragon-8da4w", {"image_encoder": {**HQQ4, "group_size": 64}},
                                     "the vision encoder 8da4w g64 (the default until 2026-12-06) instead of 8da8w"),
    "snapdragon-8da4w-visionfp32": ("snapdragon-8da4w", {"image_encoder": None},
                                    "the vision encoder fp32 instead of 8da8w"),
    "snapdragon-8da4w-emb8": ("snapdragon-8da4w", {"embed_tokens": {"scheme": "int8", "algorithm": "hqq"}},
                              "the token embedding int8 per row instead of int4 g64"),
    # export_llm's own scheme (`quantization.qmode=8da4w`: every nn.Linear, lm_head included, 8da4w in groups,
    # HQQ scale-only qparams by default; the embedding left fp32) on our pipeline, the vision encoder fp32: its
    # accuracy on the demo stands in for export_llm's program, which cannot run the demo's image questions
    **{f"export_llm-scheme-g{g}": ("snapdragon-8da4w-g32", {
        "decoder": {**HQQ4, "group_size": g}, "lm_head": {**HQQ4, "group_size": g}, "embed_tokens": None,
        "image_encoder": None}, f"export_llm's scheme: decoder and lm_head 8da4w g{g} HQQ, embedding and vision "
                                "encoder fp32") for g in (32, 128)},
}

# the results files' schema (``suite.run_suite`` writes it, ``report.load_results`` reads only it)
SCHEMA = "mobilevlm_export.benchsuite/2"
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
    frontier: bool = False  # a point of the 8da4w speed/accuracy frontier (part of its plot and table)
    commit: str | None = None  # BEFORE: the commit whose package builds the row

    def to_dict(self) -> dict:
        return asdict(self)


ET = "ExecuTorch/XNNPACK"
ORT = "ONNX Runtime"
ROWS = (
    Row("eager-fp32", EAGER, "PyTorch eager", "fp32 (the reference)", "fp32"),
    Row("onnx-fp32", OURS, ORT, "onnx-fp32", "fp32", target="onnx"),
    Row("orin-int4", OURS, ORT, "orin-int4", "int4", target="orin", group_size=128),
    Row("et-fp32", OURS, ET, "snapdragon-fp32", "fp32", target="snapdragon"),
    Row("et-8da4w", OURS, ET, "snapdragon-8da4w", "8da4w", target="snapdragon", group_size=128, frontier=True),
    Row("et-8da4w-g64", OURS, ET, "snapdragon-8da4w-g64", "8da4w", target="snapdragon", group_size=64,
        frontier=True),
    Row("et-8da4w-g32", OURS, ET, "snapdragon-8da4w-g32", "8da4w", target="snapdragon", group_size=32,
        versus="export_llm-g32", frontier=True),
    Row("et-8da4w-g128", OURS, ET, G128, "8da4w", target="snapdragon", group_size=128, versus="export_llm-g128",
        frontier=True),
    Row("et-8da4w-v4", OURS, ET, "snapdragon-8da4w-vision8da4w", "8da4w", target="snapdragon", group_size=128,
        frontier=True),
    Row("et-8da4w-vf32", OURS, ET, "snapdragon-8da4w-visionfp32", "8da4w", target="snapdragon", group_size=128,
        frontier=True),
    Row("et-8da4w-e8", OURS, ET, "snapdragon-8da4w-emb8", "8da4w", target="snapdragon", group_size=128,
        frontier=True),
    Row("export_llm-g32", EXPORT_LLM, "ExecuTorch export_llm", "8da4w g32, fp32 embedding", "8da4w", group_size=32,
        decoder_only=True),
    Row("export_llm-g128", EXPORT_LLM, "ExecuTorch export_llm", "8da4w g128, fp32 embedding", "8da4w",
        group_size=128, decoder_only=True),
    Row("ort-int4-b32", ORT_INT4, "ONNX Runtime MatMulNBits", "int4 block 32 on onnx-fp32's decoder", "int4",
        group_size=32, decoder_only=True),
)
BY_NAME = {r.name: r for r in ROWS}
# accuracy-only rows (built on the demo, never timed): export_llm's scheme on our pipeline, beside each export_llm row
STAND_INS = {f"export_llm-g{g}": Row(f"export_llm-scheme-g{g}", OURS, ET, f"export_llm-scheme-g{g}", "8da4w",
                                     target="snapdragon", group_size=g) for g in (32, 128)}
# each tool's default program: ours (the shipped snapdragon-8da4w) and export_llm's documented default group size
DEFAULTS = ("et-8da4w", "export_llm-g128")
# rows timed back to back in every round (so each ours / export_llm ratio compares measurements seconds apart, not
# minutes, on a host whose speed drifts): the g32 pair, and export_llm g128 between its two partners (ours at g128
# and our default)
ADJACENT = (("et-8da4w-g32", "export_llm-g32"), ("et-8da4w", "export_llm-g128", "et-8da4w-g128"))


def before_row(commit: str, group_size: int | None) -> Row:
    """Our default program (``DEFAULTS[0]``) as the package at ``commit`` builds it from its own recipe file of that
    name, the row the suite's before / after comparison puts beside today's."""
    after = BY_NAME[DEFAULTS[0]]
    return Row(f"{after.name}@{commit[:7]}", BEFORE, after.backend, after.recipe, after.precision,
               target=after.target, group_size=group_size, commit=commit)


def timing_order(rows: list[Row]) -> list[Row]:
    """``rows`` in the order a round times them: the suite's order, each ``ADJACENT`` group's selected rows
    together where its first selected member stands."""
    chosen = {r.name: r for r in rows}
    order, placed = [], set()
    for r in rows:
        if r.name in placed:
            continue
        group = next((g for g in ADJACENT if r.name in g), (r.name,))
        members = [chosen[n] for n in group if n in chosen and n not in placed]
        order += members
        placed |= {m.name for m in members}
    return order


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


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"recipe value {v!r}: the suite writes only strings, numbers and booleans")


def to_toml(data: dict) -> str:
    """A recipe's tables (two levels at most: ``[recipe]``, ``[quantize.decoder]``) as TOML text."""
    lines: list[str] = []

    def table(name: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"\n[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    for name, body in data.items():
        table(name, body)
    return "\n".join(lines).lstrip("\n") + "\n"


def derived_recipe(name: str) -> str:
    """The text of the derived recipe ``name`` (``DERIVED``): its shipped base with the named ``[quantize.PART]``
    tables replaced (or removed: None) and the name changed; the base's tolerances kept."""
    from mobilevlm_export.schema import tomllib

    base, changes, words = DERIVED[name]
    data = tomllib.loads((RECIPES_DIR / f"{base}.toml").read_text())
    missing = [part for part in changes if part not in data.get("quantize", {})]
    if missing or data.get("recipe", {}).get("name") != base:
        raise UserError(f"recipes/{base}.toml changed form: the suite cannot derive {name} from it")
    data["recipe"]["name"] = name
    for part, table in changes.items():  # None: the part left in the build's float precision
        if table is None:
            del data["quantize"][part]
        else:
            data["quantize"][part] = table
    return (f"# Derived by mobilevlm_export.benchsuite from {base}.toml: {words}.\n# The tolerances are "
            f"{base}'s. Not a shipped recipe.\n" + to_toml(data))


def recipe_at(source: Path | str, recipe: str) -> Path:
    """The shipped recipe file ``recipe`` in the package at ``source`` (``prepare.source_at``: a ``BEFORE`` row's
    commit)."""
    return Path(source) / "recipes" / f"{recipe}.toml"


def recipe_text(row: Row, cache: Path) -> tuple[str, Path]:
    """(the recipe's text, the path to build with) of one of our rows; a derived recipe is written to
    ``cache/recipes/``."""
    if row.recipe in DERIVED:
        path = cache / "recipes" / f"{row.recipe}.toml"
        text = derived_recipe(row.recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return text, path
    path = RECIPES_DIR / f"{row.recipe}.toml"
    return path.read_text(), path


def schemes(row: Row, cache: Path, source: str | None = None) -> dict[str, str] | None:
    """How each part of one of our rows is stored, from its recipe (``{"decoder": "8da4w g64", ...}``; a part the
    recipe leaves out stays in the build's float precision; ``source``: a ``BEFORE`` row's package, whose recipe
    file it is); None for the reference and the peers."""
    if row.kind not in (OURS, BEFORE):
        return None
    from mobilevlm_export.recipes import load_recipe

    recipe = load_recipe(recipe_at(source, row.recipe) if source else recipe_text(row, cache)[1])
    return {part: spec.scheme.value + (f" g{spec.group_size}" if spec.group_size else "")
            for part, spec in recipe.quantize.items()}
