"""A deployment target that lives outside mobilevlm_export: what a company adds without forking the package.

``edgebox``: an imaginary x86 edge box running ONNX Runtime. fp32 or fp16 graphs with a fused image encoder, its
own recipe table (``[edgebox]``), its own recipes directory, and a runtime file of its own (``edgebox.json``: the
session options the box's service reads) that the manifest records as data. Registered through the
``mobilevlm_export.targets`` entry-point group (see tests/test_plugin_target.py); it uses only the package's
public building blocks: ``targets.base``, ``graphs.split``, ``graphs.contracts``, ``backends.onnx``, ``schema``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mobilevlm_export.backends import Backend
from mobilevlm_export.graphs.contracts import GraphContract, KVCache, Limits
from mobilevlm_export.schema import Precision, bounded
from mobilevlm_export.targets.base import CompileContext, CompileRecord, TargetBase, check_backend

SESSION_FILE = "edgebox.json"


@dataclass(frozen=True)
class EdgeBoxOptions:
    """The recipe's ``[edgebox]`` table."""

    max_context: int = bounded(256, min=16)
    intra_op_threads: int = bounded(1, min=1, max=64)


class EdgeBoxTarget(TargetBase):
    name = "edgebox"
    backend = Backend.ONNXRUNTIME
    kv = KVCache.DYNAMIC
    default_recipe = "edgebox-fp32"
    precisions = (Precision.FP32, Precision.FP16)
    recipe_section = "edgebox"
    recipe_options = EdgeBoxOptions
    runtime_files = (SESSION_FILE,)
    recipes_dir = Path(__file__).parent / "recipes"

    def check_recipe(self, recipe, bad) -> None:
        if not recipe.fused_image_encoder:
            raise bad("recipe.fused_image_encoder", "must be true: the edge box runs one image encoder graph")

    def limits(self, recipe, profile, dims) -> Limits:
        context = min(recipe.options.max_context, dims.max_context)
        return Limits(max_batch=1, max_prompt=context, max_context=context)

    def split(self, ckpt, recipe, limits: Limits) -> list:
        from mobilevlm_export.graphs.split import split

        return split(ckpt, recipe.precision, recipe.fused_image_encoder, limits)

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        from mobilevlm_export.backends.onnx import export_graph

        record = {}
        advance = ctx.progress("edgebox: exporting graphs", len(graphs))
        while graphs:
            g = graphs.pop(0)
            info = export_graph(g, ctx.out / "graphs" / f"{g.name}.onnx", simplify=False)
            record[g.name] = {"file": f"graphs/{info.file}", "contract": g.contract.to_dict()}
            advance()
        session = {"intra_op_threads": recipe.options.intra_op_threads,
                   "graphs": {name: r["file"] for name, r in record.items()}}
        (ctx.out / SESSION_FILE).write_text(json.dumps(session, indent=1) + "\n")
        return CompileRecord(record, info={"edgebox": session}, log=[f"edgebox: {len(record)} graphs"])

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        from mobilevlm_export.backends.onnx import OnnxRunner

        check_backend(self.name, (self.backend,), backend)
        session = json.loads((root / SESSION_FILE).read_text())
        return {name: OnnxRunner(root / g["file"], GraphContract.from_dict(g["contract"]),
                                 threads or session["intra_op_threads"])
                for name, g in graphs.items()}
