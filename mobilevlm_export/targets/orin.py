"""``build --target orin``: TensorRT-ready ONNX for Jetson Orin, quantized as Q/DQ, linted against the profile's
TensorRT ONNX parser, proven on the host with ONNX Runtime, and an on-device bundle that builds its engines.

Graphs: ``image_encoder`` (tower + projector fused), ``embed_tokens`` and the dynamic-KV ``decoder``, fp16
weights and activations (logits fp32), int32 ``input_ids``/``attention_mask``/``position_ids``. Quantization
rewrites the exported graphs' weight MatMuls to Q/DQ (``quantize/onnx_stage.py``): int4 weight-only blocked along K
(symmetric, zero point 0; AWQ pre-scales optional) or W8A8 with calibrated per-tensor activation scales. No int8
weight-only: TensorRT's weight-only quantization is INT4 only (its int8 quantizes activations and weights).
``graphs/*.onnx`` are the standard form (opset 21) ONNX Runtime runs on the host; when the profile's TensorRT
parses opsets below 21 (JetPack 6: TensorRT 10.3), ``trt/*.onnx`` hold the same graphs with blocked DQ as
``trt::DequantizeLinear`` at opset 20, and the build checks the two differ in nothing else.
``build_plan.json`` + ``build_engines.sh`` say how to build the engines on the device (``mvlm-export trt-build``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobilevlm_export.backends import Backend
from mobilevlm_export.backends.tensorrt_qdq import STANDARD_OPSET
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.graphs.contracts import KVCache, Limits
from mobilevlm_export.schema import Precision, QuantAlgorithm, StrEnum, bounded
from mobilevlm_export.targets.base import CompileContext, CompileRecord, TargetBase, check_backend

# int4 block along the input dim when a recipe names none (TensorRT's and ModelOpt's default)
DEFAULT_BLOCK = 128
# Jetson's CPU and GPU share the memory: what the OS, the CUDA context and the runtime's own buffers leave to an
# engine (a conservative share; JetPack's desktop alone takes 1-2 GB)
USABLE_MEMORY_FRACTION = 0.75
# the builder's workspace is capped at this share of the device's memory (tactics that need more are skipped)
WORKSPACE_MEMORY_FRACTION = 0.25
GIB = 1 << 30
_FLOAT = (Precision.FP16,)
_WEIGHTS = (Precision.FP16, Precision.INT4, Precision.W8A8)


class Logits(StrEnum):
    LAST = "last"  # the decoder returns the last position's logits (prefill skips the lm_head over the prompt)
    ALL = "all"


@dataclass(frozen=True)
class TensorRTOptions:
    """The ``[tensorrt]`` table of an orin recipe: the shapes to build for and the decoder's logits."""

    max_prompt: int = bounded(384, min=1)   # longest prompt, image tokens included (the prefill profile)
    max_context: int = bounded(512, min=2)  # prompt + answer (the decode profile's longest cache)
    logits: Logits = Logits.LAST
    workspace_mb: int = bounded(2048, min=64)  # builder workspace limit


@dataclass(frozen=True)
class OrinDevice:
    """The ``[orin]`` table of an orin device profile."""

    jetpack: str
    tensorrt: str  # the TensorRT version JetPack ships: picks the parser's op table and the Q/DQ form
    fp16_tflops: float = bounded(min=1e-3)  # dense fp16 tensor-core throughput of the GPU
    compute_capability: str = "8.7"
    # memory the TensorRT builder takes at start-up, host and GPU (cited in the profile); the runtime's start-up
    # (CUDA context, TensorRT's libraries) while engines run
    builder_host_gb: float = bounded(0.9, min=0)
    builder_gpu_gb: float = bounded(0.75, min=0)
    runtime_gb: float = bounded(0.75, min=0)


class OrinTarget(TargetBase):
    name = "orin"
    backend = Backend.TENSORRT
    kv = KVCache.DYNAMIC
    default_recipe = "orin-int4"
    default_profile = "orin-agx-64gb"
    precisions = (Precision.FP16, Precision.INT4, Precision.W8A8)
    quantize_parts = {"image_encoder": (Precision.FP16, Precision.W8A8),
                      "embed_tokens": _FLOAT, "decoder": _WEIGHTS, "lm_head": _WEIGHTS}
    default_group_size = DEFAULT_BLOCK
    algorithms = (QuantAlgorithm.RTN, QuantAlgorithm.AWQ, QuantAlgorithm.SMOOTHQUANT)
    recipe_section = "tensorrt"
    recipe_options = TensorRTOptions
    profile_options = OrinDevice
    runtime_files = ("build_plan.json",)  # backends.tensorrt.PLAN: what trt-build reads

    def check_recipe(self, recipe, bad) -> None:
        if not recipe.fused_image_encoder:
            raise bad("recipe.fused_image_encoder", "must be true for orin (one image_encoder engine)")
        if recipe.options.max_prompt > recipe.options.max_context:
            raise bad("tensorrt.max_prompt", f"is {recipe.options.max_prompt}, larger than tensorrt.max_context "
                                             f"{recipe.options.max_context}")
        for part, q in recipe.quantize.items():
            if q.group_size is not None and q.scheme != Precision.INT4:
                raise bad(f"quantize.{part}.group_size", f"applies to int4 only (scheme is {q.scheme.value})")
            if q.group_size is not None and q.group_size not in (32, 64, 128):
                raise bad(f"quantize.{part}.group_size", f"is {q.group_size}; TensorRT's int4 blocks: 32, 64, 128")
            if q.algorithm == QuantAlgorithm.AWQ and q.scheme != Precision.INT4:
                raise bad(f"quantize.{part}.algorithm", "awq applies to int4 weights only")
            if q.algorithm == QuantAlgorithm.SMOOTHQUANT and q.scheme != Precision.W8A8:
                raise bad(f"quantize.{part}.algorithm", "smoothquant applies to w8a8 only")

    def limits(self, recipe, profile, dims) -> Limits:
        opts = recipe.options
        # an image prompt is the image's tokens plus at least one text token (the samples' own prompts are
        # checked against max_prompt by the pipeline); a context no longer than the prompt leaves no room to answer
        if opts.max_prompt <= dims.image_tokens:
            raise UserError(f"{recipe.source}: tensorrt.max_prompt = {opts.max_prompt} leaves no room for text beside "
                            f"the model's {dims.image_tokens} image tokens: no image prompt could run; it must be "
                            f"more than {dims.image_tokens}")
        if opts.max_context <= opts.max_prompt:
            raise UserError(f"{recipe.source}: tensorrt.max_context = {opts.max_context} must be larger than "
                            f"tensorrt.max_prompt {opts.max_prompt}: no room for a generated token")
        if opts.max_context > dims.max_context:
            raise UserError(f"{recipe.source}: tensorrt.max_context = {opts.max_context} exceeds the model's "
                            f"max_position_embeddings {dims.max_context}")
        if opts.max_context > profile.max_context:
            raise UserError(f"{recipe.source}: tensorrt.max_context = {opts.max_context} exceeds {profile.name}'s "
                            f"max_context {profile.max_context}")
        if recipe.precision not in profile.precisions:
            raise UserError(f"--recipe {recipe.name}: precision {recipe.precision.value} is not one {profile.name} "
                            f"runs ({', '.join(p.value for p in profile.precisions)})")
        widths = {"decoder": (dims.hidden, dims.intermediate), "lm_head": (dims.hidden,),
                  "image_encoder": (dims.vision_hidden,)}
        for part, q in recipe.quantize.items():
            if q.scheme != Precision.INT4:
                continue
            block = q.group_size or DEFAULT_BLOCK
            for k in widths.get(part, ()):
                if k % block:
                    raise UserError(f"{recipe.source}: quantize.{part}.group_size = {block} does not divide the "
                                    f"{part} layers' input width {k}")
        return Limits(max_batch=profile.max_batch, max_prompt=opts.max_prompt, max_context=opts.max_context)

    def split(self, ckpt, recipe, limits: Limits) -> list:
        from mobilevlm_export.graphs.split import split

        return split(ckpt, Precision.FP16, True, limits, recipe.options.logits == Logits.LAST, index_dtype="int32")

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        import onnx

        from mobilevlm_export.backends.tensorrt import BuildPlan, engine_plan, write_plan
        from mobilevlm_export.backends.tensorrt_lint import lint_file
        from mobilevlm_export.backends.tensorrt_qdq import write_trt_form
        from mobilevlm_export.graphs.contracts import GraphContract
        from mobilevlm_export.quantize.onnx_stage import quantize_exported
        from mobilevlm_export.quantize.plan import QuantPlan
        from mobilevlm_export.targets.onnx import export_graphs

        # torch modules and their weights are released graph by graph, before quantization
        record = export_graphs(graphs, ctx, "Exporting graphs to ONNX (fp16)")
        # Q/DQ in the standard form (what ONNX Runtime verifies); the trt form is written from it below
        plan = QuantPlan.from_recipe(recipe, self.quantize_parts, DEFAULT_BLOCK)
        log = list(quantize_exported(ctx.out, record, plan, ctx.progress).log)
        trt_version = profile.options.tensorrt
        opset_max = _parser_opset(trt_version)
        advance = ctx.progress(f"TensorRT {trt_version} lint", len(record))
        findings, plan = [], BuildPlan(trt_version, profile.name, workspace_bytes(recipe, profile))
        for name, rec in record.items():
            engine_input = rec["file"]
            if opset_max < STANDARD_OPSET:  # this parser stops below opset 21: ship the trt-domain form
                engine_input = f"trt/{name}.onnx"
                write_trt_form(onnx.load(str(ctx.out / rec["file"])), ctx.out / engine_input)
            rec["engine_onnx"] = engine_input
            findings += lint_file(ctx.out / engine_input, trt_version, name)  # weights read only where checked
            nodes = onnx.load(str(ctx.out / engine_input), load_external_data=False).graph.node
            qdq = any(n.op_type == "DequantizeLinear" for n in nodes)
            plan.engines.append(engine_plan(GraphContract.from_dict(rec["contract"]), engine_input,
                                            strongly_typed=qdq))
            advance()
        if findings:
            shown = "; ".join(str(f) for f in findings[:5])
            raise CheckFailed(f"TensorRT {trt_version} lint: {len(findings)} finding(s): {shown}")
        write_plan(plan, ctx.out)
        fits = fits_on_device(ctx.out, record, ctx.model["dims"], recipe, profile)
        log.append(fits["summary"])
        engines = _engines_at_build(plan, ctx)
        if not isinstance(engines, str):
            for e in engines:
                record[e["graph"]]["engine"] = e["file"]
        info = {"tensorrt": trt_version, "lint": "passed", "plan": "build_plan.json", "fits": fits,
                "engines": engines}
        log.append(f"engines: {engines if isinstance(engines, str) else 'built with TensorRT ' + trt_version}")
        table = [{"graph": n, "onnx": r["engine_onnx"], "bytes": (ctx.out / r["engine_onnx"]).stat().st_size,
                  "profiles": ", ".join(p.name for p in e.profiles)}
                 for (n, r), e in zip(record.items(), plan.engines, strict=True)]
        return CompileRecord(record, info, log, table)

    def device_build(self, root: Path, log=print, record_only: bool = False) -> list[dict]:
        """The CLI's ``trt-build``: the bundle's engines built (or recorded) on the device
        (``backends.tensorrt.build_bundle_engines``)."""
        from mobilevlm_export.backends.tensorrt import build_bundle_engines

        return build_bundle_engines(root, log, record_only)

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        """TensorRT engines when the manifest records them (``trt-build``, or a build with TensorRT: listed in its
        artifacts with their sha256): they run, or this fails in one line saying why (no TensorRT, no CUDA
        device, cuda-python missing or newer than the driver); the standard-form graphs on ONNX Runtime when no
        engine is recorded or ``backend`` is ``onnxruntime``. Never one for the other without being asked.
        ``UserError`` for a planned engine on disk that the manifest does not record (built by
        ``build_engines.sh``): it would run unchecked, or be silently passed over (unless ONNX Runtime is asked
        for)."""
        from mobilevlm_export.backends.tensorrt import PLAN, read_plan
        from mobilevlm_export.graphs.contracts import GraphContract
        from mobilevlm_export.manifest import MANIFEST

        check_backend(self.name, (Backend.TENSORRT, Backend.ONNXRUNTIME), backend)
        planned = read_plan(root).engines if (root / PLAN).is_file() and backend != Backend.ONNXRUNTIME else ()
        for e in planned:
            if "engine" not in graphs.get(e.graph, {}) and (root / e.engine).exists():
                raise UserError(f"{root / e.engine}: built but not recorded in {root / MANIFEST} (no sha256); "
                                f"`mvlm-export trt-build {root} --record-only` records the engines build_engines.sh "
                                f"built (`mvlm-export trt-build {root}` builds and records them with the TensorRT "
                                "API)")
        recorded = [name for name, g in graphs.items() if "engine" in g]
        if backend == Backend.ONNXRUNTIME or (backend is None and not recorded):
            from mobilevlm_export.targets.onnx import OnnxTarget

            return OnnxTarget().open_runners(root, graphs, threads)
        if len(recorded) < len(graphs):
            missing = sorted(set(graphs) - set(recorded))
            raise UserError(f"{root / MANIFEST}: no TensorRT engine recorded for {', '.join(missing)}: run "
                            f"`mvlm-export trt-build {root}` on the device (or --backend onnxruntime)")
        from mobilevlm_export.backends.tensorrt_runtime import TensorRTRunner, tensorrt_available

        why = tensorrt_available()
        if why:
            raise UserError(f"{root}: its TensorRT engines cannot run here: {why}; --backend onnxruntime runs the "
                            "bundle's ONNX graphs on the CPU instead")
        return {name: TensorRTRunner(root / g["engine"], GraphContract.from_dict(g["contract"]))
                for name, g in graphs.items()}


def _parser_opset(trt_version: str) -> int:
    from mobilevlm_export.backends.tensorrt_lint import load_table

    try:
        return load_table(trt_version).opset_max
    except ValueError as exc:
        raise UserError(f"orin.tensorrt = {trt_version}: {exc}") from None


# The vision tower's attention head width (CLIP ViT-L/14 and every MobileVLM tower: 64), for its activation estimate
VISION_HEAD_DIM = 64


def memory_fit(graph_weights: dict[str, int], dims: dict, recipe, profile) -> dict:
    """What building and running the engines take on ``profile`` (Jetson: CPU and GPU share one memory), against
    it; ``UserError`` with the numbers when a phase cannot fit at all, ``fits`` false (a warning) above the usable
    share. ``graph_weights``: graph -> bytes of its weights (initializers).

    - Build (one engine at a time, ``build_engines.sh`` or ``trt-build``): the builder's start-up (the profile's
      ``builder_host_gb`` + ``builder_gpu_gb``, cited there), the parsed ONNX model's weights in host memory, the
      builder's copy of them on the GPU and the serialized engine in host memory (3 x the largest graph's weights),
      and the workspace limit.
    - Run: every engine's weights, the runtime's start-up (``runtime_gb``), the KV cache twice (the runner's
      ping-pong buffers at the longest context and batch), and per engine its execution context's activation
      memory, the largest over its optimization profiles (estimated below from the profile's max shapes: fp16
      attention scores and probabilities, the MLP's three intermediates, a few hidden-size tensors, the logits)."""
    opts, dev = recipe.options, profile.options
    batch, prompt, context = profile.max_batch, opts.max_prompt, opts.max_context
    h, inter, heads = dims["hidden"], dims["intermediate"], dims["heads"]
    logits_rows = 1 if opts.logits == Logits.LAST else prompt
    kv = 2 * dims["layers"] * dims["kv_heads"] * dims["head_dim"] * context * batch * 2

    def decoder_activations(seq: int, past: int) -> int:
        scores = 2 * heads * seq * (past + seq) * 2
        return batch * (scores + 3 * seq * inter * 2 + 4 * seq * h * 2 + (logits_rows if seq > 1 else 1)
                        * dims["vocab"] * 4)

    patches, vh = dims["patches"], dims["vision_hidden"]
    vision = batch * (2 * (vh // VISION_HEAD_DIM) * patches * patches * 2 + 4 * patches * vh * 2 * 2)
    profiles = {"image_encoder": {"default": vision},
                "embed_tokens": {"default": batch * prompt * h * 2},
                "decoder": {"prefill": decoder_activations(prompt, 0), "decode": decoder_activations(1, context - 1)}}
    activations = {g: max(p.values()) for g, p in profiles.items() if g in graph_weights}
    weights = sum(graph_weights.values())
    workspace = workspace_bytes(recipe, profile)
    builder = int((dev.builder_host_gb + dev.builder_gpu_gb) * 1e9)
    largest = max(graph_weights, key=graph_weights.get)
    build = builder + 3 * graph_weights[largest] + workspace
    runtime = int(dev.runtime_gb * 1e9)
    run = weights + runtime + 2 * kv + sum(activations.values())
    total = profile.memory_gb * GIB
    usable = total * USABLE_MEMORY_FRACTION
    build_numbers = (f"TensorRT builder {_size(builder)} + 3 x the {largest}'s weights "
                     f"{_size(graph_weights[largest])} (parsed, on the GPU, serialized) + workspace {_size(workspace)}"
                     f" = {_size(build)}")
    run_numbers = (f"weights {_size(weights)} + runtime {_size(runtime)} + KV cache 2 x {_size(kv)} (context "
                   f"{context}, batch {batch}) + activations {_size(sum(activations.values()))} "
                   f"(decoder prefill {_size(profiles['decoder']['prefill'])}, decode "
                   f"{_size(profiles['decoder']['decode'])}) = {_size(run)}")
    for phase, need, numbers in (("build", build, build_numbers), ("run", run, run_numbers)):
        if need > total:
            raise UserError(f"{recipe.source}: does not fit {profile.name} ({profile.memory_gb:g} GB) to {phase}: "
                            f"{numbers}; lower tensorrt.max_context / max_prompt / workspace_mb or quantize more")
    fits = max(build, run) <= usable
    head = (f"fits {profile.name}" if fits else
            f"warning: exceeds the {usable / GIB:.1f} GiB usable on {profile.name} ({USABLE_MEMORY_FRACTION:.0%} "
            f"of {profile.memory_gb:g} GB; the build or the run may be killed)")
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "workspace_bytes": workspace, "builder_bytes": builder,
            "runtime_bytes": runtime, "activation_bytes": {g: profiles[g] for g in activations},
            "build_bytes": build, "run_bytes": run, "need_bytes": max(build, run), "usable_bytes": int(usable),
            "fits": fits,
            "summary": f"{head}: build: {build_numbers}; run: {run_numbers} (of {usable / GIB:.1f} GiB usable)"}


def fits_on_device(root: Path, record: dict, dims: dict, recipe, profile) -> dict:
    """``memory_fit`` of the graphs written under ``root`` (``record``: the manifest's graph records)."""
    import onnx

    from mobilevlm_export.backends.onnx import initializer_bytes

    weights = {name: initializer_bytes(onnx.load(str(root / r["file"]), load_external_data=False).graph)
               for name, r in record.items()}
    return memory_fit(weights, dims, recipe, profile)


def workspace_bytes(recipe, profile) -> int:
    """The engine builder's workspace limit: the recipe's, capped by the device's memory."""
    return min(recipe.options.workspace_mb << 20, int(profile.memory_gb * GIB * WORKSPACE_MEMORY_FRACTION))


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / (1 << 20):.2f} MiB"


def _engines_at_build(plan, ctx: CompileContext) -> str | list:
    """Build the engines now when TensorRT and a GPU are here; else say why not (the bundle builds them on the
    device)."""
    from mobilevlm_export.backends.tensorrt import build_engine
    from mobilevlm_export.backends.tensorrt_runtime import tensorrt_available

    why = tensorrt_available()
    if why:
        return f"not built: {why}"
    return [build_engine(e, ctx.out, plan.workspace_bytes) for e in plan.engines]
