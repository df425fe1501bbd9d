"""``build --target snapdragon``: one ExecuTorch ``.pte`` lowered to XNNPACK, the methods ExecuTorch's stock
multimodal runner drives, quantized with torchao per the recipe.

Graph -> method names (``extension/llm/runner/constants.h``) are this target's business alone: ``image_encoder``
(tower + projector) is the method ``vision_encoder``, ``embed_tokens`` is ``token_embedding``, ``decoder`` (the
static-KV decoder, its cache in mutable buffers) is ``text_decoder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobilevlm_export.backends import Backend
from mobilevlm_export.graphs.contracts import KVCache, Limits
from mobilevlm_export.schema import Precision, QuantAlgorithm, StrEnum, bounded
from mobilevlm_export.targets.base import CompileContext, CompileRecord, TargetBase, check_backend

PTE = "model.pte"
_METHODS = {"image_encoder": "vision_encoder", "embed_tokens": "token_embedding", "decoder": "text_decoder"}
# a scheme's group size when the recipe names none (ExecuTorch's export_llm examples use 32)
DEFAULT_GROUP_SIZE = 32
_LINEAR = (Precision.FP32, Precision.DA8W8, Precision.DA8W4)


class Attention(StrEnum):
    CUSTOM_SDPA = "custom_sdpa"  # llama.update_cache / llama.custom_sdpa (read only the positions written)
    PORTABLE = "portable"        # index_copy_ + a masked softmax over the whole cache (any ExecuTorch runtime)


class KVCacheInit(StrEnum):
    SERIALIZED = "serialized"  # the cache's zeros are stored in the .pte
    RUNTIME = "runtime"        # left to the runtime's zeroed arena (custom_sdpa never reads unwritten positions)


class Logits(StrEnum):
    LAST = "last"  # the decoder returns the last position's logits (no lm_head over the whole prompt)
    ALL = "all"    # every position's, each checked by verify


@dataclass(frozen=True)
class ExecuTorchOptions:
    """The ``[executorch]`` table of a snapdragon recipe."""

    max_cache: int = bounded(512, min=2)  # static KV-cache positions (prompt + image tokens + answer)
    attention: Attention = Attention.CUSTOM_SDPA
    kv_cache_init: KVCacheInit = KVCacheInit.SERIALIZED
    logits: Logits = Logits.LAST


class SnapdragonTarget(TargetBase):
    name = "snapdragon"
    backend = Backend.EXECUTORCH
    kv = KVCache.STATIC
    default_recipe = "snapdragon-8da4w"
    default_profile = "snapdragon-8-gen-3"
    precisions = _LINEAR
    quantize_parts = {"image_encoder": _LINEAR, "decoder": _LINEAR, "lm_head": _LINEAR,
                      "embed_tokens": (Precision.FP32, Precision.INT8, Precision.INT4)}
    default_group_size = DEFAULT_GROUP_SIZE
    algorithms = (QuantAlgorithm.RTN, QuantAlgorithm.HQQ)
    recipe_section = "executorch"
    recipe_options = ExecuTorchOptions
    profile_options = None
    runtime_files = ()

    def check_recipe(self, recipe, bad) -> None:
        if not recipe.fused_image_encoder:
            raise bad("recipe.fused_image_encoder", "must be true for snapdragon (one vision_encoder method)")
        if recipe.quant("decoder").scheme != recipe.precision:
            raise bad("quantize.decoder.scheme", f"is {recipe.quant('decoder').scheme.value!r} but "
                                                 f"recipe.precision is {recipe.precision.value!r}")

    def limits(self, recipe, profile, dims) -> Limits:
        from mobilevlm_export.errors import UserError

        max_cache = recipe.options.max_cache
        if recipe.precision not in profile.precisions:
            raise UserError(f"--recipe {recipe.name}: precision {recipe.precision.value} is not one {profile.name} "
                            f"runs ({', '.join(p.value for p in profile.precisions)})")
        if max_cache > profile.max_context:
            raise UserError(f"{recipe.source}: executorch.max_cache = {max_cache} exceeds {profile.name}'s "
                            f"max_context {profile.max_context}")
        if max_cache > dims.max_context:
            raise UserError(f"{recipe.source}: executorch.max_cache = {max_cache} exceeds the model's "
                            f"max_position_embeddings {dims.max_context}")
        return Limits(max_batch=1, max_prompt=max_cache, max_context=max_cache)

    def split(self, ckpt, recipe, limits: Limits) -> list:
        from mobilevlm_export.graphs.split import split_static

        opts = recipe.options
        return split_static(ckpt, limits, opts.attention == Attention.CUSTOM_SDPA, opts.logits == Logits.LAST)

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        import time

        from mobilevlm_export.backends.executorch import export_program
        from mobilevlm_export.quantize.plan import QuantPlan
        from mobilevlm_export.quantize.torchao import quantize_graphs

        opts = recipe.options
        records = {g.name: {"file": PTE, "method": _METHODS[g.name], "contract": g.contract.to_dict()}
                   for g in graphs}
        modules = {g.name: g.module for g in graphs}
        t0 = time.perf_counter()
        plan = QuantPlan.from_recipe(recipe, self.quantize_parts, DEFAULT_GROUP_SIZE)
        log = list(quantize_graphs(modules, plan).log)
        quant_s = time.perf_counter() - t0
        samples = {_METHODS[g.name]: g.sample_args() for g in graphs}
        dynamic = {_METHODS[g.name]: _dynamic_shapes(g.contract) for g in graphs}
        methods = {_METHODS[name]: modules.pop(name) for name in list(modules)}
        # the build drops its own references to the weights here and export_program pops the modules as it
        # exports them (ExecuTorch's lowered modules still keep their original programs, and so the weights)
        graphs.clear()
        advance = ctx.progress("Export + XNNPACK lowering", len(methods) + 2)
        info = export_program(methods, samples, dynamic, ctx.out / PTE, constant_methods(ctx.model, opts),
                              opts.kv_cache_init == KVCacheInit.SERIALIZED, self.partitioners, advance)
        table = [{"method": m.method, "XNNPACK nodes": m.delegated_nodes, "portable nodes": m.portable_nodes,
                  "subgraphs": m.delegated_subgraphs} for m in info.methods]
        return CompileRecord(records, {**info.to_dict(), "quantize_seconds": round(quant_s, 2)}, log, table)

    def partitioners(self, method: str | None = None) -> list:
        """XNNPACK's partitioners for ``method``: one partitioner taking dynamic-quant linears and fp32 ops alike,
        so that linears and the ops between them share delegates (the vision encoder's graph is written in ops
        XNNPACK takes, ``graphs.vision.DelegableVisionEncoder``, so it is one). ``token_embedding`` gets none: its
        quantized embedding is no op XNNPACK takes, and each partitioner costs ExecuTorch decompositions of the
        method (``to_edge_transform_and_lower``). See ``_partitioner_class`` for what it keeps undecomposed."""
        from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType

        if method == _METHODS["embed_tokens"]:
            return []
        return [_partitioner_class()(config_precisions=[ConfigPrecisionType.DYNAMIC_QUANT, ConfigPrecisionType.FP32])]

    def prepare_process(self) -> None:
        from mobilevlm_export.backends.executorch import prepare_runtime_process

        prepare_runtime_process()

    def bench_notes(self, manifest: dict) -> list[str]:
        """The note of programs timed beside PyTorch's OpenMP team (a build's own process), if any."""
        import sys

        if "torch" not in sys.modules:
            return []
        from mobilevlm_export.backends.executorch import openmp_contention

        note = openmp_contention(sys.modules["torch"].get_num_threads())
        return [note] if note else []

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        from mobilevlm_export.errors import UserError
        from mobilevlm_export.graphs.contracts import GraphContract
        from mobilevlm_export.manifest import MANIFEST

        check_backend(self.name, (self.backend,), backend)

        try:
            from mobilevlm_export.backends.executorch import ExecuTorchRunner, load_program
        except ImportError as exc:
            raise UserError(f"{root}: running an ExecuTorch program needs executorch==1.5.1 ({exc})") from None
        programs: dict[str, object] = {}  # one loaded program per file, shared by its methods' runners
        runners = {}
        for name, g in graphs.items():
            if "method" not in g:
                raise UserError(f"{root / MANIFEST}: graphs.{name}.method is missing (the .pte method to run)")
            path = root / g["file"]
            if g["file"] not in programs:
                programs[g["file"]] = load_program(path, threads)
            runners[name] = ExecuTorchRunner(programs[g["file"]], path, GraphContract.from_dict(g["contract"]),
                                             g["method"])
        return runners


_PARTITIONER = None


def _partitioner_class():
    """ExecuTorch's ``XnnpackPartitioner`` whose ops kept from decomposition (``ops_to_not_decompose``: aten.linear
    and the few others XNNPACK lowers whole) come without their per-node check. With the check, ExecuTorch's
    ``to_edge_transform_and_lower`` decomposes a method once, then twice more per partitioner (to tag the nodes
    that pass it, then again); without, once, then at most once per partitioner, and it fails the build if a kept
    op was not delegated (its ``_sanity_check_graph_for_non_decomp_ops``), as the matmul check here would for a
    linear. Same .pte bytes on the demo, run_decompositions 8 -> 6 calls (benchmarks/results)."""
    global _PARTITIONER
    if _PARTITIONER is None:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        class Partitioner(XnnpackPartitioner):
            def ops_to_not_decompose(self, ep):
                ops, _check = super().ops_to_not_decompose(ep)
                return ops, None

        _PARTITIONER = Partitioner
    return _PARTITIONER


def _dynamic_shapes(contract) -> tuple | None:
    """``torch.export`` dynamic shapes of ``contract``'s inputs (contract order), one ``Dim`` per symbol with the
    contract's range."""
    import torch

    dims = {s: torch.export.Dim(s, min=r.min, max=r.max) for s, r in contract.ranges.items()}
    shapes = tuple({i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)} or None
                   for t in contract.inputs)
    return None if all(s is None for s in shapes) else shapes


def constant_methods(model: dict, opts: ExecuTorchOptions) -> dict:
    """What ExecuTorch's LLM runner reads (``extension/llm/runner/constants.h``) and what a device app needs to
    preprocess an image and build the prompt without the checkpoint. ``model``: the manifest's model record."""
    from mobilevlm_export.runtime.preprocess import ImagePreprocess

    dims, pre = model["dims"], model["preprocess"]
    return {
        "get_max_seq_len": opts.max_cache, "get_max_context_len": opts.max_cache,
        "get_bos_id": int(model["bos_token_id"]), "get_eos_ids": [int(model["eos_token_id"])],
        "get_vocab_size": dims["vocab"], "use_kv_cache": True, "enable_dynamic_shape": True,
        "use_sdpa_with_kv_cache": opts.attention == Attention.CUSTOM_SDPA,
        "get_image_size": pre["crop_size"], "get_image_shortest_edge": pre["shortest_edge"],
        "get_image_rescale_factor": float(pre["rescale_factor"]), "get_image_pad_to_square": bool(pre["pad_to_square"]),
        "get_image_mean": [float(v) for v in pre["mean"]], "get_image_std": [float(v) for v in pre["std"]],
        "get_image_pad_color": list(ImagePreprocess.from_dict(pre).pad_color), "get_image_resample": pre["resample"],
        "get_image_token_id": model["image_token_index"], "get_image_seq_len": dims["image_tokens"],
    }
