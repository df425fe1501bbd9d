"""``build --target onnx`` (alias: ``export --format onnx``): dynamic-KV graphs as ONNX files run by ONNX Runtime.

Writes ``graphs/<graph>.onnx`` per graph (vision_encoder + projector, or a fused image_encoder; embed_tokens;
decoder with ``past_key_values.*`` in and ``present.*`` out), fp32 or fp16 weights and activations.
"""

from __future__ import annotations

from pathlib import Path

from mobilevlm_export.backends import Backend
from mobilevlm_export.graphs.contracts import KVCache, Limits
from mobilevlm_export.schema import Precision, QuantAlgorithm
from mobilevlm_export.targets.base import CompileContext, CompileRecord, TargetBase, check_backend

# the batch range recorded in the contracts (ONNX Runtime takes any batch; an engine builder needs a bound)
HOST_MAX_BATCH = 8


class OnnxTarget(TargetBase):
    name = "onnx"
    backend = Backend.ONNXRUNTIME
    kv = KVCache.DYNAMIC
    default_recipe = "onnx-fp32"
    default_profile = None
    precisions = (Precision.FP32, Precision.FP16)
    quantize_parts: dict = {}
    default_group_size = None
    algorithms = (QuantAlgorithm.RTN,)
    recipe_section = None
    recipe_options = None
    profile_options = None
    runtime_files = ()

    def check_recipe(self, recipe, bad) -> None:
        pass

    def limits(self, recipe, profile, dims) -> Limits:
        context = profile.max_context if profile else dims.max_context
        batch = profile.max_batch if profile else HOST_MAX_BATCH
        return Limits(max_batch=batch, max_prompt=context, max_context=context)

    def split(self, ckpt, recipe, limits: Limits) -> list:
        from mobilevlm_export.graphs.split import split

        return split(ckpt, recipe.precision, recipe.fused_image_encoder, limits)

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        record = export_graphs(graphs, ctx, "Exporting graphs to ONNX")
        return CompileRecord(record, log=[f"{n}: {r['export']['simplify_note']}" for n, r in record.items()])

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        from mobilevlm_export.backends.onnx import OnnxRunner
        from mobilevlm_export.graphs.contracts import GraphContract

        check_backend(self.name, (self.backend,), backend)

        return {name: OnnxRunner(root / g["file"], GraphContract.from_dict(g["contract"]), threads)
                for name, g in graphs.items()}


def export_graphs(graphs: list, ctx: CompileContext, description: str) -> dict[str, dict]:
    """Export each graph to ``graphs/<name>.onnx`` under ``ctx.out``; the manifest's graph records. Consumes
    ``graphs``: each torch module (and its weights) is released once written, before the next is exported."""
    from mobilevlm_export.backends.onnx import export_graph
    from mobilevlm_export.memory import release_memory

    record: dict[str, dict] = {}
    advance = ctx.progress(description, len(graphs))
    while graphs:
        g = graphs.pop(0)
        info = export_graph(g, ctx.out / "graphs" / f"{g.name}.onnx", simplify=ctx.simplify)
        record[g.name] = {"file": f"graphs/{info.file}", "contract": g.contract.to_dict(), "export": info.to_dict()}
        advance()
        del g
        release_memory()  # the graph's torch weights and the exporter's buffers
    return record
