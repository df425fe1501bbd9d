"""The ``mvlm-export`` command line: parses flags, calls the library, prints tables or one JSON object.

Exit codes: 0 success, 1 a check failed (parity), 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from mobilevlm_export.errors import CheckFailed, UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deployment toolchain for MobileVLM: inspect, generate, build (export), run, verify, bench.")

CkptArg = Annotated[Path | None, typer.Argument(
    help="MobileVLM checkpoint directory (HF layout). Omitted: the bundled demo checkpoint.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (for CI).")]
TowerOpt = Annotated[Path | None, typer.Option(
    "--vision-tower", help="Directory of the CLIP vision tower (config, weights, image processor) to use.")]
SamplesOpt = Annotated[Path | None, typer.Option(
    help="Folder with images + questions.json for the end-to-end check (default: the demo's samples).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")]
# generation flags shared by `generate` (reference) and `run` (artifacts)
ImageOpt = Annotated[Path, typer.Option("--image", help="Image file (any mode/size PIL reads).")]
PromptOpt = Annotated[str, typer.Option("--prompt", help="The user's question; the template is applied.")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1)]
TemperatureOpt = Annotated[float, typer.Option(help="0 = greedy.", min=0.0)]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0)]
SeedOpt = Annotated[int, typer.Option(help="Sampling seed.")]
RawPromptOpt = Annotated[bool, typer.Option("--raw-prompt", help="Use PROMPT as is (no template).")]


@contextmanager
def _exit_codes():
    """Map library errors to exit codes with a one-line message on stderr."""
    try:
        yield
    except (UserError, CheckFailed) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _load(ckpt: Path | None, vision_tower: Path | None, quiet: bool):
    from rich.console import Console

    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    path = ckpt if ckpt is not None else demo_checkpoint_dir()
    console = Console(stderr=True, quiet=quiet)
    with console.status(f"Loading {path}"):
        return load_checkpoint(path, vision_tower)


# loggers whose warnings are about the libraries, not the user's input: torchao's optional CUDA kernels failing to
# load on a CPU machine, torch's pytree deprecation notes
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


@app.callback()
def _quiet_libraries() -> None:
    """Library warnings stay out of the CLI's output (a bad input gets our one line, not transformers' notes
    about it): transformers logs errors only, unless TRANSFORMERS_VERBOSITY says otherwise, and so do the
    ``QUIET_LOGGERS``, unless a level was set on them."""
    import logging
    import os

    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # a user's own setting is transformers' to read
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        if "transformers" in sys.modules:  # already configured in this process: it read the variable then
            logging.getLogger("transformers").setLevel(logging.ERROR)
    for name in QUIET_LOGGERS:  # unless a user set a level on them
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


@app.command()
def inspect(ckpt: CkptArg = None, vision_tower: TowerOpt = None, as_json: JsonOpt = False) -> None:
    """Architecture, parameter counts, dims and the graphs a split will make."""
    with _exit_codes():
        from mobilevlm_export.summary import describe

        info = describe(_load(ckpt, vision_tower, as_json))
        if as_json:
            _print_json(info)
        else:
            _print_inspect(info)


@app.command()
def generate(
    ckpt: CkptArg = None,
    image: ImageOpt = ...,
    prompt: PromptOpt = ...,
    max_new_tokens: MaxNewOpt = 64,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    seed: SeedOpt = 0,
    raw_prompt: RawPromptOpt = False,
    vision_tower: TowerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about an image with the PyTorch reference model."""
    with _exit_codes():
        import time

        from mobilevlm_export.checkpoint.reference import Reference
        from mobilevlm_export.generation import SamplingParams
        from mobilevlm_export.runtime.preprocess import load_image

        img = load_image(image)
        loaded = _load(ckpt, vision_tower, as_json)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, seed=seed)
        t0 = time.perf_counter()
        result = Reference(loaded).generate(img, prompt, params, raw_prompt=raw_prompt)
        seconds = time.perf_counter() - t0
        if as_json:
            _print_json({"checkpoint": str(loaded.config.path), "image": str(image), "prompt": prompt,
                         **result.to_dict(), "load_seconds": round(loaded.report.load_seconds, 3),
                         "generate_seconds": round(seconds, 3)})
        else:
            typer.echo(result.text)


@contextmanager
def _progress(quiet: bool):
    """A rich progress display on stderr; yields ``step(description, total) -> advance()``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True, quiet=quiet), transient=False) as bar:
        def step(description: str, total: int):
            task = bar.add_task(description, total=total)
            return lambda: bar.advance(task)

        yield step


OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Output directory (must be new or empty).")]
ThreadsOpt = Annotated[int | None, typer.Option(help="Runtime threads for verify/bench.", min=1)]
NoSimplifyOpt = Annotated[bool, typer.Option("--no-simplify", help="Skip onnxsim (ONNX-based targets).")]


def _run_build(cfg, as_json: bool) -> None:
    """Run the pipeline, print its summary (or one JSON object), exit 1 when parity failed."""
    from mobilevlm_export.pipeline import build as run_pipeline

    with _progress(as_json) as step:
        result = run_pipeline(cfg, step)
    manifest = result.manifest
    extra = {"output": str(cfg.out), "target": manifest["target"], "build": manifest["build"],
             "artifacts": manifest["artifacts"], "latency": manifest.get("latency"),
             "log": manifest["compile"]["log"], "compile": manifest["compile"]}
    if not as_json:
        _print_build(manifest)
    _report(result.report, as_json, extra)


@app.command()
def build(
    ckpt: CkptArg = None,
    out: OutOpt = ...,
    target: Annotated[str, typer.Option(help="Deployment target: onnx (ONNX Runtime graphs) | orin (TensorRT-ready "
                                             "ONNX bundle) | snapdragon (ExecuTorch/XNNPACK .pte).")] = ...,
    recipe: Annotated[str | None, typer.Option(help="Recipe name (recipes/NAME.toml) or path; default: the "
                                                    "target's (onnx-fp32, orin-int4, snapdragon-8da4w).")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile name (device_profiles/NAME.toml) or path.")]
    = None,
    samples: SamplesOpt = None,
    threads: ThreadsOpt = None,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the latency measurement.")] = False,
    no_simplify: NoSimplifyOpt = False,
    force: ForceOpt = False,
    vision_tower: TowerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Split, quantize (recipe), compile for a target, verify parity, benchmark, write DIR + manifest."""
    with _exit_codes():
        from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
        from mobilevlm_export.pipeline import BuildConfig

        _run_build(BuildConfig(ckpt=ckpt or demo_checkpoint_dir(), out=out, target=target, recipe=recipe,
                               profile=profile, force=force, vision_tower=vision_tower, samples=samples,
                               threads=threads, bench=not no_bench, simplify=not no_simplify), as_json)


@app.command()
def export(
    ckpt: CkptArg = None,
    out: OutOpt = ...,
    fmt: Annotated[str, typer.Option("--format", help="Artifact format: onnx.")] = "onnx",
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 (weights and activations); default: the "
                                                       "recipe's, else fp32.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Recipe name (recipes/NAME.toml) or path; "
                                                    "default FORMAT-PRECISION.")] = None,
    samples: SamplesOpt = None,
    force: ForceOpt = False,
    no_simplify: NoSimplifyOpt = False,
    vision_tower: TowerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Alias of `build --target onnx --no-bench`: export the graphs, verify parity, write DIR + manifest."""
    with _exit_codes():
        from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
        from mobilevlm_export.pipeline import BuildConfig, export_recipe

        if fmt != "onnx":
            raise UserError(f"--format {fmt}: unknown (known: onnx; device targets: `build --target`)")
        _run_build(BuildConfig(ckpt=ckpt or demo_checkpoint_dir(), out=out, target="onnx",
                               recipe=export_recipe(recipe, precision), force=force, vision_tower=vision_tower,
                               samples=samples, bench=False, simplify=not no_simplify), as_json)


@app.command()
def bench(
    artifacts: Annotated[Path, typer.Argument(help="Directory written by build/export.")],
    threads: Annotated[int | None, typer.Option(help="Runtime threads.", min=1)] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, help="Text tokens after the image.")] = 64,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", min=1)] = 32,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    text_only: Annotated[bool, typer.Option("--text-only", help="Prefill text tokens only (no image), as "
                                                                "decoder-only peers measure.")] = False,
    profile: Annotated[str | None, typer.Option(help="Device profile to predict (default: the build's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure vision ms, prefill and decode tokens/s on this host from DIR alone; predict the device's."""
    with _exit_codes():
        from mobilevlm_export.bench import measure, predict
        from mobilevlm_export.profiles import load_profile
        from mobilevlm_export.runtime.artifacts import open_artifacts

        art = open_artifacts(artifacts)
        result = {"artifacts": str(artifacts), "target": art.manifest["target"],
                  "host": measure(art, threads, prompt_tokens, decode_tokens, repeats, text_only)}
        prof = profile or (art.manifest.get("profile") or {}).get("name")
        predicted = predict(art, load_profile(prof)) if prof else None
        if predicted:
            result["predicted"] = predicted
        if as_json:
            _print_json(result)
        else:
            for section in ("host", "predicted"):
                if section in result:
                    typer.echo(f"{section}: " + ", ".join(f"{k}={v}" for k, v in result[section].items()))


def _print_build(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    comp = manifest["compile"]
    for line in comp["log"]:
        console.print(f"{manifest['target']}: {line}")
    if comp["table"]:
        table = Table(*comp["table"][0], title=f"{manifest['target']} artifacts")
        for row in comp["table"]:
            table.add_row(*map(str, row.values()))
        console.print(table)
    lat = manifest.get("latency") or {}
    for section in ("host", "predicted"):
        if section in lat:
            console.print(f"{section}: " + ", ".join(f"{k}={v}" for k, v in lat[section].items()))


@app.command("trt-build")
def trt_build(
    artifacts: Annotated[Path, typer.Argument(help="An orin bundle written by `build --target orin`.")],
    as_json: JsonOpt = False,
) -> None:
    """On the Jetson: build the bundle's TensorRT engines (build_plan.json) and record them in its manifest; then
    `verify DIR` and `run DIR` use them."""
    with _exit_codes():
        from mobilevlm_export.targets.orin import trt_build as build_engines

        built = build_engines(artifacts, log=lambda line: typer.echo(line, err=True))
        if as_json:
            _print_json({"artifacts": str(artifacts), "engines": built})
        else:
            for e in built:
                typer.echo(f"{e['graph']}: {e['file']} ({e['bytes'] / 1e6:.1f} MB, {e['seconds']} s)")


@app.command()
def run(
    artifacts: Annotated[Path, typer.Argument(help="Directory written by build/export.")],
    image: ImageOpt = ...,
    prompt: PromptOpt = ...,
    max_new_tokens: MaxNewOpt = 64,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    seed: SeedOpt = 0,
    raw_prompt: RawPromptOpt = False,
    threads: Annotated[int | None, typer.Option(help="Runtime threads.", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with the artifacts in DIR only (no checkpoint, no torch model)."""
    with _exit_codes():
        from mobilevlm_export.generation import SamplingParams
        from mobilevlm_export.runtime.artifacts import answer, open_artifacts

        art = open_artifacts(artifacts)
        if art.passed is False:
            typer.echo(f"warning: {artifacts} failed its parity check at build time (manifest verification.passed "
                       "= false); its answers may differ from the model's", err=True)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, seed=seed)
        result = answer(art, image, prompt, params, raw_prompt, threads)
        if as_json:
            _print_json({"artifacts": str(artifacts), "target": art.manifest["target"], "image": str(image),
                         "prompt": prompt, **result})
        else:
            typer.echo(result["text"])


@app.command()
def verify(
    artifacts: Annotated[Path, typer.Argument(help="Directory written by build/export.")],
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write a JUnit XML report here.")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: up to 4).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run parity from DIR's golden data: exit 0 when every metric meets its tolerance, 1 otherwise."""
    with _exit_codes():
        from mobilevlm_export.runtime.artifacts import open_artifacts
        from mobilevlm_export.verify import verify_artifacts, verify_steps, write_junit

        art = open_artifacts(artifacts)
        with _progress(as_json) as step:
            report = verify_artifacts(art, threads, step("Verifying parity", verify_steps(art)))
        if junit:
            write_junit(report, junit)
        _report(report, as_json, {"artifacts": str(artifacts)})


def _report(report, as_json: bool, extra: dict) -> None:
    """Print a verification report; exit 1 when it failed."""
    if as_json:
        _print_json({**extra, "verification": report.to_dict()})
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table("graph", "case", "output", "max abs", "mean abs", "cosine", "top-1", "KL", "ok",
                      title="Per-graph parity")
        for m in report.metrics:
            table.add_row(m.graph, m.case, m.output, f"{m.max_abs:.3g}", f"{m.mean_abs:.3g}", f"{m.cosine:.7f}",
                          "" if m.top1 is None else f"{m.top1:.3f}", "" if m.kl is None else f"{m.kl:.2g}",
                          "yes" if m.passed else "[red]NO[/]")
        console.print(table)
        matched = sum(r.match for r in report.e2e)
        console.print(f"End-to-end greedy tokens: {matched}/{len(report.e2e)} pairs identical "
                      f"(agreement {report.token_agreement:.3f}, required {report.token_agreement_min:.3f})")
        for w in report.worst():
            console.print(f"[red]FAIL[/] {w['graph']}/{w['case']} {w['output']}: {w['metric']} = {w['value']:.4g} "
                          f"(tolerance {w['tolerance']})")
        console.print("[green]PASSED[/]" if report.passed else "[red]FAILED[/]")
    if not report.passed:
        raise typer.Exit(1)


def _print_inspect(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    a, d = info["architecture"], info["dims"]
    console.print(f"[bold]{info['checkpoint']}[/]  {a['architectures']}  projector={a['projector']}")
    console.print(f"vision tower: {a['vision_tower']} ({info['vision_tower_source']})")
    console.print(f"stored dtypes: {info['stored_dtypes']}  files: {len(info['weight_files'])}")
    params = Table("component", "parameters", title="Parameters")
    for k, v in info["parameters"].items():
        params.add_row(k, f"{v:,}")
    console.print(params)
    dims = Table("dim", "value", title="Dims")
    for k, v in d.items():
        dims.add_row(k, str(v))
    console.print(dims)
    graphs = Table("graph", "inputs", "outputs", title="Graphs (dynamic KV)")
    for g in info["graphs"]:
        fmt = lambda ts: "\n".join(f"{t['name']} {t['dtype']}[{', '.join(map(str, t['dims']))}]"  # noqa: E731
                                   for t in ts[:5]) + (
            f"\n... {len(ts) - 5} more" if len(ts) > 5 else "")
        graphs.add_row(g["name"], fmt(g["inputs"]), fmt(g["outputs"]))
    console.print(graphs)


def _terminated(signum, _frame) -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so a build's staging directory is removed."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    app()


if __name__ == "__main__":
    sys.exit(main())
