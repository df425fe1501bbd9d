"""``build --target snapdragon``: checkpoint -> golden reference -> static-KV split -> quantize (recipe) ->
XNNPACK lowering -> one ``.pte`` -> verify -> bench (+ device prediction) -> manifest.

Golden outputs come from the fp32 reference before quantization (quantization replaces the shared weights in
place, so no second fp32 copy of the model is ever held). Everything is written into a staging directory
renamed into place at the end.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.export import Staging, check_output_dir, checkpoint_record, model_record, peak_rss_mb
from mobilevlm_export.recipes import Recipe, load_recipe

TARGETS = {"snapdragon": "snapdragon-8da4w"}  # target -> default recipe
DEFAULT_PROFILES = {"snapdragon": "snapdragon-8-gen-3"}
PTE = "model.pte"


@dataclass(frozen=True)
class BuildOptions:
    ckpt: Path
    out: Path
    target: str = "snapdragon"
    recipe: str | None = None
    profile: str | None = None
    force: bool = False
    vision_tower: Path | None = None
    samples: Path | None = None
    threads: int | None = None
    bench: bool = True


def resolve(opts: BuildOptions) -> tuple[Recipe, object]:
    """The recipe and device profile of a build, checked against the target (``UserError`` names the flag)."""
    from mobilevlm_export.profiles import load_profile

    if opts.target not in TARGETS:
        raise UserError(f"--target {opts.target}: unknown (known: {', '.join(TARGETS)}; "
                        "for ONNX use `export --format onnx`)")
    recipe = load_recipe(opts.recipe or TARGETS[opts.target])
    if recipe.target != opts.target:
        raise UserError(f"--recipe {opts.recipe}: is for target {recipe.target}, not {opts.target}")
    profile = load_profile(opts.profile or DEFAULT_PROFILES[opts.target])
    if profile.target != opts.target:
        raise UserError(f"--profile {opts.profile}: is a {profile.target} device, not {opts.target}")
    if recipe.precision not in profile.precisions:
        raise UserError(f"--recipe {recipe.name}: precision {recipe.precision} is not one {profile.name} runs "
                        f"({', '.join(profile.precisions)})")
    if recipe.executorch.max_cache > profile.max_context:
        raise UserError(f"{recipe.source}: executorch.max_cache = {recipe.executorch.max_cache} exceeds "
                        f"{profile.name}'s max_context {profile.max_context}")
    return recipe, profile


def _check_cache_fits(recipe: Recipe, ckpt, pairs) -> None:
    from mobilevlm_export.checkpoint.prompt import IMAGE_TOKEN_INDEX
    from mobilevlm_export.checkpoint.reference import build_prompt_ids
    from mobilevlm_export.graphs.contracts import ModelDims

    dims = ModelDims.from_checkpoint(ckpt)
    max_cache = recipe.executorch.max_cache
    if max_cache > dims.max_context:
        raise UserError(f"{recipe.source}: executorch.max_cache = {max_cache} exceeds the model's "
                        f"max_position_embeddings {dims.max_context}")
    for p in pairs:
        ids = build_prompt_ids(ckpt.tokenizer, p.question)
        need = len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (dims.image_tokens - 1)
        if need + recipe.max_new_tokens > max_cache:
            raise UserError(f"{recipe.source}: executorch.max_cache = {max_cache} is smaller than the prompt plus "
                            f"image tokens ({need}) + e2e.max_new_tokens ({recipe.max_new_tokens}) of "
                            f"'{p.image.name}: {p.question}'")


def constant_methods(ckpt, recipe: Recipe) -> dict:
    """What ExecuTorch's LLM runner reads (``extension/llm/runner/constants.h``) and what a device app needs to
    preprocess an image and build the prompt without the checkpoint."""
    from mobilevlm_export.checkpoint.prompt import IMAGE_TOKEN_INDEX
    from mobilevlm_export.graphs.contracts import ModelDims

    dims = ModelDims.from_checkpoint(ckpt)
    pre = ckpt.preprocess
    eos = ckpt.eos_token_id
    return {
        "get_max_seq_len": recipe.executorch.max_cache, "get_max_context_len": recipe.executorch.max_cache,
        "get_bos_id": int(ckpt.tokenizer.bos_token_id), "get_eos_ids": [int(eos)],
        "get_vocab_size": dims.vocab, "use_kv_cache": True, "enable_dynamic_shape": True,
        "use_sdpa_with_kv_cache": recipe.executorch.attention == "custom_sdpa",
        "get_image_size": pre.crop_size, "get_image_shortest_edge": pre.shortest_edge,
        "get_image_rescale_factor": float(pre.rescale_factor), "get_image_pad_to_square": bool(pre.pad_to_square),
        "get_image_mean": [float(v) for v in pre.mean],
        "get_image_std": [float(v) for v in pre.std], "get_image_pad_color": [int(v) for v in pre.pad_color],
        "get_image_resample": pre.resample, "get_image_token_id": IMAGE_TOKEN_INDEX,
        "get_image_seq_len": dims.image_tokens,
    }


def _sample_args(graph) -> tuple:
    """Export-time sample inputs of ``graph`` in contract order (3 tokens where the sequence is dynamic)."""
    import torch

    from mobilevlm_export.graphs.split import TORCH_DTYPES

    feeds = graph.sample_inputs({"seq": 3})
    return tuple(torch.from_numpy(feeds[t.name]).to(TORCH_DTYPES[t.dtype]) for t in graph.contract.inputs)


def build(opts: BuildOptions, progress=None):
    """Run a build. Returns (manifest, VerifyReport)."""
    import torch

    from mobilevlm_export.backends.executorch import METHODS, export_program
    from mobilevlm_export.bench import model_costs
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.golden import demo_pairs, load_pairs, make_golden, save_golden
    from mobilevlm_export.graphs.split import split_static
    from mobilevlm_export.manifest import read_manifest, update_manifest, versions, write_manifest
    from mobilevlm_export.quantize import quantize_modules
    from mobilevlm_export.runtime.artifacts import ArtifactSet
    from mobilevlm_export.verify import verify_artifacts, verify_steps

    check_output_dir(opts.out, opts.force)
    recipe, profile = resolve(opts)
    pairs = load_pairs(opts.samples) if opts.samples else demo_pairs()
    step = progress or (lambda _d, _t: (lambda: None))
    t0 = time.perf_counter()
    done = step("Loading checkpoint", 1)
    ckpt = load_checkpoint(opts.ckpt, opts.vision_tower)
    done()
    _check_cache_fits(recipe, ckpt, pairs)
    staging = Staging(opts.out, opts.force)
    with staging as tmp:
        done = step("Reference outputs (golden data)", 1)
        arrays, e2e = make_golden(ckpt, pairs, True, recipe.max_new_tokens, kv="static")
        save_golden(tmp, arrays, e2e)
        del arrays
        done()
        ckpt.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        sp_model = ckpt.config.path / "tokenizer.model"  # what ExecuTorch's C++ runner loads on the device
        if sp_model.is_file():
            shutil.copyfile(sp_model, tmp / "tokenizer" / "tokenizer.model")
        record_model, record_ckpt = model_record(ckpt), checkpoint_record(ckpt)
        consts = constant_methods(ckpt, recipe)
        graphs = split_static(ckpt, recipe.executorch.max_cache, recipe.executorch.attention == "custom_sdpa",
                              recipe.executorch.logits == "last")
        modules = {METHODS[g.name]: g.module for g in graphs}
        costs = model_costs(modules, recipe.quantize, record_model["dims"]["patches"] + 1)
        t1 = time.perf_counter()
        quant_log = quantize_modules(modules, recipe.quantize)
        quant_s = time.perf_counter() - t1
        samples = {METHODS[g.name]: _sample_args(g) for g in graphs}  # no loop variable left holding a graph
        seq = torch.export.Dim("seq", min=1, max=recipe.executorch.max_cache)
        dynamic = {"token_embedding": {"input_ids": {1: seq}},
                   "text_decoder": {"inputs_embeds": {1: seq}, "input_pos": {0: seq}}}
        graph_records = {g.name: {"file": PTE, "method": METHODS[g.name], "contract": g.contract.to_dict(),
                                  **({"max_cache": recipe.executorch.max_cache} if g.name == "decoder" else {})}
                         for g in graphs}
        # the build drops its own references to the weights here and export_program pops the modules as it
        # exports them (ExecuTorch's lowered modules still keep their original programs, and so the weights)
        del graphs, ckpt
        advance = step("Export + XNNPACK lowering", len(modules) + 2)
        info = export_program(modules, samples, dynamic, tmp / PTE, consts,
                              recipe.executorch.kv_cache_init == "serialized", advance)
        write_manifest(tmp, {
            "tool": "mobilevlm_export", "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "backend": "executorch", "target": opts.target, "precision": recipe.precision,
            "checkpoint": record_ckpt, "recipe": recipe.to_dict(), "profile": profile.to_dict(),
            "model": record_model, "graphs": graph_records, "versions": versions(),
            "program": {**info.to_dict(), "quantize_seconds": round(quant_s, 2), "quantization": quant_log,
                        "costs": costs},
        })
        art = ArtifactSet(tmp, read_manifest(tmp, check=False))
        advance = step("Verifying parity", verify_steps(art))
        report = verify_artifacts(art, opts.threads, progress=advance)
        fields = {"verification": report.to_dict()}
        if opts.bench:
            from mobilevlm_export.bench import bench_artifacts

            done = step("Benchmark", 1)
            fields["latency"] = bench_artifacts(art, opts.threads, profile)
            done()
        fields["build"] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
        manifest = update_manifest(tmp, **fields)
        staging.commit()
    return manifest, report
