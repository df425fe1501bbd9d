"""The ``mvlm-export`` command line: parses flags, calls the library, prints tables or one JSON object.

Exit codes: 0 success, 1 a check failed (parity), 2 bad input (one line on stderr, no traceback), 3 an internal
error (one line; ``--debug`` or ``MVLM_EXPORT_DEBUG=1`` shows the traceback), 141 stdout's reader went away
(silently). With ``--json``, stdout holds one JSON object in every case: the result, or ``{"error": ...,
"exit_code": ...}``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own click
    from typer._click import exceptions as clickx
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as clickx
    from click import get_current_context

from mobilevlm_export.cores import ONNX_MAX_DEFAULT_THREADS, usable_cores
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.outdir import on_terminate, raise_if_terminated
from mobilevlm_export.quiet import DEBUG_ENV  # set to 1: internal errors show their traceback, native logs too
from mobilevlm_export.targets import prepare_runtime_processes, registry

INTERNAL_ERROR = 3
# stdout's reader went away (`mvlm-export inspect | head`): exit silently with 128 + SIGPIPE, the status a shell
# reports for a command SIGPIPE ended (`yes | head`), as a CLI that left SIGPIPE at its default would end. Not
# click's 1, which here means a failed parity check; not 0, since the output was cut short (`set -o pipefail`).
BROKEN_PIPE = 128 + 13


class _OneLineErrors(TyperGroup):
    """Usage errors (an unknown flag, a value out of range) as one line, ``error: ...``, exit 2, instead of
    click's usage box; one JSON object on stdout with ``--json``."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except getattr(clickx, "NoArgsIsHelpError", ()) as exc:  # click >= 8.2 (before, the help is printed and
            exc.show()                                              # main returns 0: nothing to catch)
            code = 0
        except clickx.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code, "--json" in argv)
        except typer.Abort:
            code = _fail("interrupted", 130, "--json" in argv)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deployment toolchain for MobileVLM: inspect, generate, build (export), run, verify, bench.")


@dataclass(frozen=True)
class Invocation:
    """What one command knows beyond its own flags: whether an internal error shows its traceback (``--debug``,
    or ``MVLM_EXPORT_DEBUG`` set). The app's callback makes it for each invocation and hands it down through
    click's context (``ctx.obj``), so nothing carries over to the next command run in the same process."""

    debug: bool = False


def _invocation() -> Invocation:
    """This command's ``Invocation`` (outside a command: the environment's)."""
    ctx = get_current_context(silent=True)
    found = ctx.find_object(Invocation) if ctx is not None else None
    return found or Invocation(debug=_debug_env())


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# this process's stdout once its reader went away or it could not be written: (why, the stream), a fact of the
# process's stream, not of one command (a test runner's next stream is not lost)
_stdout_lost: dict[str, tuple[str, object]] = {}

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
# every integer flag is range-checked by the parser, before anything loads: counts of tokens up to int32 (the graphs'
# positions), a seed as numpy's and torch's generators take it, runs no more than a benchmark can mean
MAX_TOKENS, MAX_SEED, MAX_RUNS = 2**31 - 1, 2**64 - 1, 1_000_000
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, max=MAX_TOKENS)]
TemperatureOpt = Annotated[float, typer.Option(help="0 = greedy.", min=0.0)]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0, max=MAX_TOKENS)]
SeedOpt = Annotated[int, typer.Option(help=f"Sampling seed, 0..{MAX_SEED}.", min=0, max=MAX_SEED)]
RawPromptOpt = Annotated[bool, typer.Option("--raw-prompt", help="Use PROMPT as is (no template).")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="Runtime to run DIR on, one its target runs (`mvlm-export targets`); default: the target's "
                      "own (a bundle's recorded engines must run here).")]
CORES = usable_cores()
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="List every tensor's parity (default: the worst per graph and output kind).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    help=f"CPU runtime threads, 1..{CORES} (default: ONNX Runtime min({CORES}, {ONNX_MAX_DEFAULT_THREADS}); "
         "ExecuTorch its threadpool's own size; TensorRT engines run on the GPU).", min=1, max=CORES)]


def _fail(message: str, code: int, as_json: bool) -> int:
    """Say what went wrong in one line on stderr (and as one JSON object on stdout with ``--json``, unless stdout
    is lost: its reader gone, full or closed); ``code``, whatever writing the message met."""
    message = " ".join(str(message).split())
    try:
        typer.echo(f"error: {message}", err=True)
    except (OSError, ValueError):  # (stderr closed or full: the exit code still tells)
        pass
    lost = _stdout_lost.get("stdout")
    if as_json and not (lost and lost[1] is sys.stdout):
        try:
            typer.echo(json.dumps({"error": message, "exit_code": code}))
        except BrokenPipeError:
            _broken_pipe()
        except OSError:  # (StdoutUnwritable: stdout is already pointed at /dev/null)
            _broken_pipe("unwritable")
    return code


@contextmanager
def _exit_codes(as_json: bool = False):
    """Map library errors to exit codes with a one-line message: bad input 2, a failed check 1, anything else
    (a bug of ours or a library's) 3, its traceback shown with ``--debug``."""
    try:
        yield
    except (UserError, CheckFailed) as exc:
        raise typer.Exit(_fail(str(exc), exc.exit_code, as_json)) from None
    except KeyboardInterrupt:
        raise typer.Exit(_fail("interrupted", 130, as_json)) from None
    except (typer.Exit, clickx.ClickException):
        raise
    except BrokenPipeError:
        raise typer.Exit(_broken_pipe()) from None
    except StdoutUnwritable as exc:  # (a full disk or device, closed: stdout already points at /dev/null)
        raise typer.Exit(_fail(exc.strerror, UserError.exit_code, as_json)) from None
    except Exception as exc:  # noqa: BLE001 - every unexpected failure gets one line and its own exit code
        # a path too long, a symlink loop, a full disk or read-only filesystem: bad input (2) naming the path, not
        # a bug of ours (Python before 3.13 reports a loop met by Path.resolve as RuntimeError "Symlink loop from")
        if isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EDQUOT,
                                                      errno.EFBIG, errno.EROFS):
            where = f"{exc.filename}: " if exc.filename else ""
            raise typer.Exit(_fail(f"{where}{exc.strerror}", UserError.exit_code, as_json)) from None
        if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from "):
            raise typer.Exit(_fail(f"{str(exc)[len('Symlink loop from '):]}: a symbolic link loop",
                                   UserError.exit_code, as_json)) from None
        if _invocation().debug:
            raise
        where = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise typer.Exit(_fail(f"internal error: {where} (run `mvlm-export --debug ...` or set {DEBUG_ENV}=1 for "
                               "the traceback)", INTERNAL_ERROR, as_json)) from None


def _broken_pipe(lost: str = "pipe") -> int:
    """Stop writing to stdout, whose reader is gone (``lost`` "pipe"; "unwritable": full, closed, an I/O error):
    point it at /dev/null, so that no flush (Python's at exit included) raises again or prints "Exception
    ignored", and the JSON error object is not tried; the exit code to end with (``BROKEN_PIPE``)."""
    if not (_stdout_lost.get("stdout") and _stdout_lost["stdout"][1] is sys.stdout):  # (per stream: a test runner's
        _stdout_lost["stdout"] = (lost, sys.stdout)                                    # next one is not lost)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # (no file descriptor: a test runner's stream)
        pass
    return BROKEN_PIPE


def _console():
    """The console the reports print on (``render.stdout_console``): a reader of stdout that goes away raises
    ``BrokenPipeError``, handled as any write's (``BROKEN_PIPE``)."""
    from mobilevlm_export.render import stdout_console

    return stdout_console()


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


@app.callback()
def _quiet_libraries(ctx: typer.Context, debug: Annotated[bool, typer.Option(
        "--debug", help=f"Show the traceback of an internal error (exit 3); also {DEBUG_ENV}=1.")] = False) -> None:
    """Library warnings stay out of the CLI's output (``quiet.quiet_libraries``), unless ``--debug``."""
    from mobilevlm_export.quiet import quiet_libraries, show_native_logs

    ctx.obj = Invocation(debug=debug or _debug_env())
    show_native_logs(True if debug else None)  # this command's: the native runtimes' log lines too
    quiet_libraries(True if debug else None)  # --debug: the libraries' notes too


@app.command()
def inspect(ckpt: CkptArg = None, vision_tower: TowerOpt = None, as_json: JsonOpt = False) -> None:
    """Architecture, parameter counts, dims and the graphs a split will make."""
    with _exit_codes(as_json):
        from mobilevlm_export.summary import describe

        info = describe(_load(ckpt, vision_tower, as_json))
        if as_json:
            _print_json(info)
        else:
            from mobilevlm_export.render import print_inspect

            print_inspect(_console(), info)


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
    with _exit_codes(as_json):
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

        try:
            yield step
        except BaseException:  # an error is one line: the bars (and rich's closing newline) are not left above it
            import io

            bar.live.transient = True
            bar.live.console.file = io.StringIO()
            raise


OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Output directory (must be new or empty).")]
NoSimplifyOpt = Annotated[bool, typer.Option("--no-simplify", help="Skip onnxsim (ONNX-based targets).")]


def _run_build(cfg, as_json: bool, verbose: bool = False) -> None:
    """Run the pipeline, print its summary (or one JSON object), exit 1 when parity failed."""
    from mobilevlm_export.pipeline import build as run_pipeline

    with _progress(as_json) as step:
        result = run_pipeline(cfg, step)
    manifest = result.manifest
    extra = {"output": str(cfg.out), "target": manifest["target"], "build": manifest["build"],
             "artifacts": manifest["artifacts"], "latency": manifest.get("latency"),
             "log": manifest["compile"]["log"], "compile": manifest["compile"]}
    if not as_json:
        from mobilevlm_export.render import print_build

        print_build(_console(), manifest)
    _report(result.report, as_json, extra, verbose=verbose)


@app.command()
def build(
    ckpt: CkptArg = None,
    out: OutOpt = ...,
    target: Annotated[str, typer.Option(help="Deployment target, a registered one (`mvlm-export targets` lists "
                                             "them).")] = ...,
    recipe: Annotated[str | None, typer.Option(help="Recipe name (recipes/NAME.toml) or path; default: the "
                                                    "target's (`mvlm-export targets`).")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile name (device_profiles/NAME.toml) or path.")]
    = None,
    samples: SamplesOpt = None,
    threads: ThreadsOpt = None,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the latency measurement.")] = False,
    no_simplify: NoSimplifyOpt = False,
    force: ForceOpt = False,
    vision_tower: TowerOpt = None,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Split, quantize (recipe), compile for a target, verify parity, benchmark, write DIR + manifest."""
    with _exit_codes(as_json):
        from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
        from mobilevlm_export.pipeline import BuildConfig

        _run_build(BuildConfig(ckpt=ckpt or demo_checkpoint_dir(), out=out, target=target, recipe=recipe,
                               profile=profile, force=force, vision_tower=vision_tower, samples=samples,
                               threads=threads, bench=not no_bench, simplify=not no_simplify), as_json, verbose)


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
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Alias of `build --target onnx --no-bench`: export the graphs, verify parity, write DIR + manifest."""
    with _exit_codes(as_json):
        from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
        from mobilevlm_export.pipeline import BuildConfig, export_recipe

        if fmt != "onnx":
            raise UserError(f"--format {fmt}: unknown (known: onnx; device targets: `build --target`)")
        _run_build(BuildConfig(ckpt=ckpt or demo_checkpoint_dir(), out=out, target="onnx",
                               recipe=export_recipe(recipe, precision), force=force, vision_tower=vision_tower,
                               samples=samples, bench=False, simplify=not no_simplify), as_json, verbose)


@app.command()
def bench(
    artifacts: Annotated[Path, typer.Argument(help="Directory written by build/export.")],
    threads: ThreadsOpt = None,
    backend: BackendOpt = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, max=MAX_TOKENS,
                                                           help="Text tokens after the image.")] = 64,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", min=1, max=MAX_TOKENS,
                                                           help="Decode steps per run.")] = 32,
    runs: Annotated[int, typer.Option("--runs", min=1, max=MAX_RUNS, help="Timed runs (each a whole request).")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=MAX_RUNS,
                                                    help="Untimed runs first (decode included).")] = 2,
    text_only: Annotated[bool, typer.Option("--text-only", help="Prefill text tokens only (no image), as "
                                                                "decoder-only peers measure.")] = False,
    profile: Annotated[str | None, typer.Option(
        "--profile", "--predict", help="Device profile (name or TOML path) whose figures to predict beside the "
                                       "measured ones (default: the build's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure vision ms, time to first token, prefill and decode on this host from DIR alone (p50, p90, min, max
    over --runs after --warmup); predict the device's. Prefill, as in `run`: embed + splice + the decoder over the
    prompt (image tokens included); time to first token = vision + prefill. A note where a metric's spread,
    (p90 - p10) / p50, exceeds 10 %. A prompt plus --decode-tokens that does not fit the decoder is refused (exit 2),
    never clamped."""
    with _exit_codes(as_json):
        prepare_runtime_processes()
        from mobilevlm_export.bench import bench_artifacts
        from mobilevlm_export.profiles import load_profile
        from mobilevlm_export.runtime.artifacts import open_artifacts

        art = open_artifacts(artifacts, backend)
        prof = load_profile(profile) if profile else art.profile  # (the build's: its manifest's copy)
        result = {"artifacts": str(artifacts), "target": art.manifest["target"],
                  **bench_artifacts(art, threads, prof, prompt_tokens, decode_tokens, runs, warmup, text_only)}
        if as_json:
            _print_json(result)
            return
        from mobilevlm_export.render import print_bench

        print_bench(_console(), result, runs, warmup, decode_tokens)


@app.command()
def targets(as_json: JsonOpt = False) -> None:
    """The registered deployment targets (built in, and added by installed plugins through the
    `mobilevlm_export.targets` entry-point group): backend, KV cache, default recipe and device profile."""
    with _exit_codes(as_json):
        rows = [{"name": t.name, "backend": t.backend, "kv": str(t.kv), "default_recipe": t.default_recipe,
                 "default_profile": t.default_profile, "precisions": [str(p) for p in t.precisions],
                 "module": type(t).__module__} for t in registry().values()]
        if as_json:
            _print_json({"targets": rows})
        else:
            for r in rows:
                typer.echo(f"{r['name']}: backend {r['backend']}, {r['kv']} KV cache, recipe {r['default_recipe']}, "
                           f"profile {r['default_profile'] or '-'}, precisions {', '.join(r['precisions'])} "
                           f"({r['module']})")


@app.command("trt-build")
def trt_build(
    artifacts: Annotated[Path, typer.Argument(help="A bundle whose target has an on-device step (`build --target "
                                                   "orin`).")],
    record_only: Annotated[bool, typer.Option("--record-only", help="Build nothing: record (sha256) the engines "
                                                                    "build_engines.sh built.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """On the Jetson: build the bundle's TensorRT engines (build_plan.json) and record them in its manifest; then
    `verify DIR` and `run DIR` use them."""
    with _exit_codes(as_json):
        from mobilevlm_export.runtime.artifacts import device_build

        built = device_build(artifacts, log=lambda line: typer.echo(line, err=True), record_only=record_only)
        if as_json:
            _print_json({"artifacts": str(artifacts), "engines": built})
        else:
            for e in built:
                took = f", {e['seconds']} s" if e["seconds"] is not None else ", recorded"
                typer.echo(f"{e['graph']}: {e['file']} ({e['bytes'] / 1e6:.1f} MB{took})")


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
    threads: ThreadsOpt = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with the artifacts in DIR only (no checkpoint, no torch model). The runtime that ran it
    is named on stderr (and in --json's `backend`)."""
    with _exit_codes(as_json):
        prepare_runtime_processes()
        from mobilevlm_export.generation import SamplingParams
        from mobilevlm_export.runtime.artifacts import answer, open_artifacts

        art = open_artifacts(artifacts, backend)
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
            typer.echo(f"backend: {result['backend']}", err=True)
            typer.echo(result["text"])


@app.command()
def verify(
    artifacts: Annotated[Path, typer.Argument(help="Directory written by build/export.")],
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write a JUnit XML report here.")] = None,
    threads: ThreadsOpt = None,
    backend: BackendOpt = None,
    recipe: Annotated[str | None, typer.Option(help="Check against this recipe's tolerances (recipes/NAME.toml or "
                                                    "a path; a recipe of DIR's target) instead of the copy in DIR's "
                                                    "manifest, which an edit could loosen.")] = None,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-run parity from DIR's golden data: exit 0 when every metric meets its tolerance, 1 otherwise."""
    with _exit_codes(as_json):
        prepare_runtime_processes()
        from mobilevlm_export.outdir import check_output_file
        from mobilevlm_export.runtime.artifacts import open_artifacts
        from mobilevlm_export.verify import gate_recipe, verify_artifacts, verify_steps, write_junit

        if junit:  # never a device, FIFO, directory or link; never inside DIR or the recipe it reads
            check_output_file(junit, "--junit", (artifacts, recipe if recipe and os.path.exists(recipe) else None))
        art = open_artifacts(artifacts, backend)
        gate = gate_recipe(art, recipe)
        steps = verify_steps(art)  # reads the golden data's names: a bad file fails before the progress display
        with _progress(as_json) as step:
            report = verify_artifacts(art, threads, step("Verifying parity", steps), gate)
        extra = {"artifacts": str(artifacts), "backend": report.backend}
        try:
            if junit:
                write_junit(report, junit)
        except OSError as exc:  # the report is still shown: the check's result is not hidden by this
            message = (f"--junit {junit}: cannot write it ({exc.strerror}); parity "
                       f"{'passed' if report.passed else 'FAILED'}")
            code = UserError.exit_code if report.passed else CheckFailed.exit_code  # a failed check comes first
            _report(report, as_json, {**extra, "error": message, "exit_code": code}, exit_on_failure=False,
                    verbose=verbose)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None
        _report(report, as_json, extra, verbose=verbose)


def _report(report, as_json: bool, extra: dict, exit_on_failure: bool = True, verbose: bool = False) -> None:
    """Print a verification report (``render.print_report``: a per-graph summary, every tensor with
    ``verbose``); exit 1 when it failed (unless ``exit_on_failure`` is false)."""
    if as_json:
        _print_json({**extra, "verification": report.to_dict()})
    else:
        from mobilevlm_export.render import print_report

        print_report(_console(), report, verbose)
    if not report.passed and exit_on_failure:
        raise typer.Exit(1)


class StdoutUnwritable(OSError):
    """stdout cannot take the output: a full disk or device (``> /dev/full``), an I/O error, closed at start
    (``>&-``). Bad input: exit 2 with one line on stderr."""


class _StdoutRaw(io.RawIOBase):
    """File descriptor 1 under the ``sys.stdout`` that ``main`` installs: a failed write points stdout at
    /dev/null (``_broken_pipe``) and raises ``BrokenPipeError`` (the reader is gone) or ``StdoutUnwritable``
    naming stdout's file, so no later write or flush meets the broken stdout again."""

    def __init__(self, closed: bool) -> None:
        super().__init__()
        self._closed_at_start = closed

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return not self._closed_at_start and os.isatty(1)

    def write(self, data) -> int | None:
        if self._closed_at_start:  # (once: stdout is /dev/null now, where the flush at exit goes)
            self._closed_at_start = False
            _broken_pipe("unwritable")
            raise StdoutUnwritable(errno.EBADF, "cannot write to stdout: it is closed")
        try:
            return os.write(1, data)
        except BlockingIOError:  # (a non-blocking stdout: the buffer above waits, as over a plain file)
            return None
        except BrokenPipeError:
            _broken_pipe()
            raise
        except OSError as exc:
            try:
                name = os.readlink("/proc/self/fd/1")
            except OSError:
                name = ""
            _broken_pipe("unwritable")
            name = f" ({name})" if name.startswith("/") else ""
            raise StdoutUnwritable(exc.errno, f"cannot write to stdout{name}: {exc.strerror}") from None


def _guard_stdio() -> None:
    """A standard descriptor closed at start (``>&-``) is pointed at /dev/null, so that a file opened later (a
    lock, a report) never takes its number and receives what is meant for stdout; ``sys.stdout`` writes through
    ``_StdoutRaw`` (a closed stdout then fails at the first write, as ``ls >&-`` does)."""
    closed = sys.stdout is None  # (Python gives None for a descriptor closed at start)
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if not closed and not (hasattr(sys.stdout, "fileno") and _fileno(sys.stdout) == 1):
        return  # (not the process's stdout: left alone)
    old = sys.stdout
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_StdoutRaw(closed)),
                                  encoding=getattr(old, "encoding", None) or "utf-8",
                                  errors=getattr(old, "errors", None) or "strict",
                                  line_buffering=bool(getattr(old, "line_buffering", False)))


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError):
        return None


def _unraisable(info) -> None:
    """Python's report of an exception it had to ignore (raised in a finalizer or weakref callback), but for a
    SIGTERM's ``SystemExit``: ``outdir.on_terminate`` recorded it, and it is honoured, not a bug to print."""
    if not issubclass(info.exc_type, SystemExit):
        sys.__unraisablehook__(info)


def main() -> None:
    signal.signal(signal.SIGTERM, on_terminate)  # (unwinds like Ctrl-C: a build's staging directory is removed)
    sys.unraisablehook = _unraisable
    _guard_stdio()
    try:
        try:
            app()
        finally:  # output still buffered meets a reader that is gone here, not inside a command
            sys.stdout.flush()
    except BrokenPipeError:
        sys.exit(_broken_pipe())
    except StdoutUnwritable as exc:  # (outside a command: click's help, a usage error's JSON)
        sys.exit(_fail(exc.strerror, UserError.exit_code, False))
    except SystemExit as exc:  # click ends with 1 where its own output (the help) met a reader that is gone
        if (_stdout_lost.get("stdout") or ("",))[0] == "pipe" and exc.code in (None, 0, 1):
            sys.exit(BROKEN_PIPE)
        raise_if_terminated()  # (a SIGTERM whose exception a finalizer swallowed still ends the process as one)
        raise


if __name__ == "__main__":
    sys.exit(main())
