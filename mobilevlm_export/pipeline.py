"""The one build pipeline: ``build(config) -> BuildResult`` for every target, stages in one order.

load -> golden data (the fp32 reference, before anything touches the weights) -> target.split -> target.compile
(quantize + lower + write) -> manifest -> verify -> bench -> commit. Everything is written into a staging sibling
of the output directory and renamed into place at the end, so a failed build leaves nothing that looks finished.
A build whose parity fails is still committed (to inspect) with ``verification.passed = false`` in its manifest;
the CLI exits 1 and ``run`` warns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.profiles import load_profile
from mobilevlm_export.recipes import load_recipe
from mobilevlm_export.targets import get_target

# the vision tower runs on its patches plus the CLS position
CLS_POSITIONS = 1


@dataclass(frozen=True)
class BuildConfig:
    """A build's inputs. ``recipe``/``profile``: a name (``recipes/NAME.toml``) or a path; None: the target's
    default. ``samples``: a folder with questions.json for the end-to-end check (None: the demo's samples).
    ``threads``: runtime threads for verify/bench. ``simplify``: ONNX-based targets keep an onnxsim-simplified
    graph when it computes the same."""

    ckpt: Path
    out: Path
    target: str
    recipe: str | None = None
    profile: str | None = None
    force: bool = False
    vision_tower: Path | None = None
    samples: Path | None = None
    threads: int | None = None
    bench: bool = True
    simplify: bool = True


@dataclass
class BuildResult:
    manifest: dict
    report: object  # verify.VerifyReport

    @property
    def passed(self) -> bool:
        return self.report.passed


def resolve(cfg: BuildConfig):
    """The target, recipe and device profile of a build, each checked against the target (``UserError`` names
    the flag)."""
    target = get_target(cfg.target)  # the one lookup of the build's target: the stages below are handed it
    recipe = load_recipe(cfg.recipe or target.default_recipe, target)
    name = cfg.profile or target.default_profile
    profile = load_profile(name, target) if name else None
    return target, recipe, profile


def build(cfg: BuildConfig, progress=None) -> BuildResult:
    """Run a build. ``progress(description, total)`` returns an ``advance()`` callable (rich bars in the CLI)."""
    from mobilevlm_export.bench import bench_artifacts, peak_rss_mb
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.records import checkpoint_record, model_dims, model_record, write_tokenizer
    from mobilevlm_export.costs import model_costs
    from mobilevlm_export.golden_writer import demo_pairs, load_pairs, make_golden, save_golden
    from mobilevlm_export.manifest import TOOL, read_manifest, update_manifest, versions, write_manifest
    from mobilevlm_export.memory import release_memory
    from mobilevlm_export.outdir import Staging, raise_if_terminated
    from mobilevlm_export.runtime.artifacts import ArtifactSet
    from mobilevlm_export.targets import CompileContext
    from mobilevlm_export.verify import verify_artifacts, verify_steps

    target, recipe, profile = resolve(cfg)
    pairs = load_pairs(cfg.samples) if cfg.samples else demo_pairs()
    given = progress or (lambda _d, _t: (lambda: None))

    def step(description: str, total: int):
        raise_if_terminated()  # a SIGTERM whose exception a finalizer swallowed stops the build at its next phase
        return given(description, total)

    t0 = time.perf_counter()
    stages: dict[str, float] = {}  # wall seconds per stage, recorded in the manifest
    lap = _Lap(stages)
    staging = Staging(cfg.out, cfg.force, inputs=(cfg.ckpt, cfg.samples, cfg.vision_tower))
    with staging as tmp:  # checked and locked before any work
        done = step("Loading checkpoint", 1)
        ckpt = load_checkpoint(cfg.ckpt, cfg.vision_tower)
        done()
        lap("load")
        dims = model_dims(ckpt)
        limits = target.limits(recipe, profile, dims)
        _check_pairs_fit(ckpt, pairs, recipe, dims.image_tokens, limits)
        model, ckpt_record = model_record(ckpt, dims), checkpoint_record(ckpt)
        done = step("Reference outputs (golden data)", 1)
        arrays, e2e = make_golden(ckpt, pairs, recipe.fused_image_encoder, recipe.e2e.max_new_tokens, kv=target.kv,
                                  max_batch=limits.max_batch)
        save_golden(tmp, arrays, e2e)
        del arrays
        done()
        lap("golden")
        write_tokenizer(ckpt, tmp / "tokenizer")
        graphs = target.split(ckpt, recipe, limits)
        del ckpt  # the graphs hold what is still needed; compile consumes them
        costs = model_costs(graphs, recipe, dims.patches + CLS_POSITIONS, target.default_group_size)
        compiled = target.compile(graphs, recipe, profile, CompileContext(tmp, model, cfg.simplify, step))
        del graphs
        release_memory()  # what the compile stage held; verify opens the artifacts afresh
        lap("split_compile")
        write_manifest(tmp, {
            "tool": TOOL, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": target.name, "backend": target.backend, "precision": recipe.precision.value,
            "checkpoint": ckpt_record, "recipe": recipe.to_dict(),
            "profile": profile.to_dict() if profile else None, "model": model, "graphs": compiled.graphs,
            "compile": {**compiled.info, "log": compiled.log, "table": compiled.table}, "costs": costs,
            "runtime_files": list(target.runtime_files),
            "versions": versions(),
        })
        art = ArtifactSet(tmp, read_manifest(tmp, check=False))
        advance = step("Verifying parity", verify_steps(art))
        report = verify_artifacts(art, cfg.threads, progress=advance)
        lap("verify")
        fields = {"verification": report.to_dict()}
        if cfg.bench:
            done = step("Benchmark", 1)
            fields["latency"] = bench_artifacts(art, cfg.threads, profile)
            done()
            lap("bench")
        del art
        fields["build"] = {"seconds": round(time.perf_counter() - t0, 2), "stages": stages,
                           "peak_rss_mb": round(peak_rss_mb(), 1), "stale_partials_removed": staging.stale}
        manifest = update_manifest(tmp, rehash=False, **fields)
        staging.commit()
    return BuildResult(manifest, report)


class _Lap:
    """Records the wall seconds since the previous lap under a stage name."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.into[stage] = round(now - self.t, 2)
        self.t = now


def _check_pairs_fit(ckpt, pairs, recipe, image_tokens: int, limits) -> None:
    """Every end-to-end pair's prompt (image tokens included) fits the build's longest prompt, and with its answer
    the build's context (``UserError``): a build whose own samples cannot run is refused before any work."""
    from mobilevlm_export.runtime.prompt import build_prompt_ids, prompt_length

    capacity = limits.max_context
    for p in pairs:
        need = prompt_length(build_prompt_ids(ckpt.tokenizer, p.question, source=p.source), image_tokens)
        if need + recipe.e2e.max_new_tokens > capacity:
            raise UserError(f"{recipe.source}: the build's context of {capacity} positions is smaller than the "
                            f"prompt plus image tokens ({need}) + e2e.max_new_tokens ({recipe.e2e.max_new_tokens}) "
                            f"of '{p.image.name}: {p.question}'")
        if need > limits.max_prompt:
            raise UserError(f"{recipe.source}: the build's longest prompt of {limits.max_prompt} positions is "
                            f"shorter than the prompt plus image tokens ({need}) of '{p.image.name}: {p.question}'")


def export_recipe(recipe: str | None, precision: str | None) -> str:
    """The recipe of ``export --format onnx [--precision P] [--recipe R]`` (the alias of ``build --target onnx``):
    ``R`` when given (``P``, if given too, must be its precision), else ``onnx-P`` (default ``onnx-fp32``)."""
    known = [p.value for p in get_target("onnx").precisions]
    if precision is not None and precision not in known:
        raise UserError(f"--precision {precision}: unknown for onnx (known: {', '.join(known)})")
    if recipe is None:
        return f"onnx-{precision or 'fp32'}"
    if precision is not None:
        given = load_recipe(recipe, get_target("onnx")).precision.value
        if given != precision:
            raise UserError(f"--recipe {recipe}: is a {given} recipe, not --precision {precision}")
    return recipe
