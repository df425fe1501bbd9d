"""The interface every deployment target implements, and the record its compile stage returns.

The build (``pipeline.build``) runs the stages once, in one order, for every target; a target supplies only
what differs: its recipe/profile rules (``check_recipe``, ``limits``), its split, its compile (quantize + lower +
write), the runners of what it wrote (``open_runners``, torch-free where the backend's runtime is) and its process
hooks (``prepare_process``, ``bench_notes``). ``TargetBase`` holds the defaults of the optional parts; a target
registers in ``targets.registry`` (built in) or through the ``mobilevlm_export.targets`` entry-point group.
Target modules import heavy libraries (torch, executorch, onnx) inside their methods only, so the registry
imports fast and the artifact side stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mobilevlm_export.backends import Backend
from mobilevlm_export.errors import UserError
from mobilevlm_export.graphs.contracts import KVCache
from mobilevlm_export.schema import Precision, QuantAlgorithm, shipped_dir


@dataclass
class CompileRecord:
    """What ``Target.compile`` wrote: per graph, its file (relative to DIR), contract and backend details;
    ``info`` for the manifest (program sizes, delegation, export notes), ``log`` lines for the user, and
    ``table`` rows for a summary table (optional)."""

    graphs: dict[str, dict]
    info: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class CompileContext:
    """What a compile stage needs besides the graphs: where to write, the model's record (dims, special ids,
    preprocessing: manifest ``model``), build switches, and a progress callback ``step(description, total)``."""

    out: Path
    model: dict
    simplify: bool = True  # ONNX-based targets: keep an onnxsim-simplified graph when it computes the same
    step: object = None

    def progress(self, description: str, total: int):
        return self.step(description, total) if self.step else (lambda: None)


class Target(Protocol):
    name: str                 # "onnx", "snapdragon", ...
    backend: Backend          # the runtime that runs the artifacts
    kv: KVCache               # the decoder's KV contract: dynamic (cache in/out) or static (in place)
    default_recipe: str       # a recipe name in ``recipes_dir``, or a path
    default_profile: str | None  # a device profile name in ``profiles_dir``, or a path; None: no devices of its own
    recipes_dir: Path         # where its recipes are found by name (``--recipe NAME``)
    profiles_dir: Path        # where its device profiles are found by name (``--profile NAME``)
    precisions: tuple[Precision, ...]                   # recipe.precision values it builds
    quantize_parts: dict[str, tuple[Precision, ...]]    # [quantize.PART] -> schemes it runs for PART
    algorithms: tuple[QuantAlgorithm, ...]
    default_group_size: int | None  # the group size of a quantized part whose recipe names none
    recipe_section: str | None  # the name of its own recipe table, e.g. "executorch"
    recipe_options: type | None  # the frozen dataclass that table is read into
    profile_options: type | None  # the frozen dataclass of its profiles' [<target>] table
    runtime_files: tuple[str, ...]  # files besides the graph records' its runtime side reads (relative to DIR)

    def check_recipe(self, recipe, bad) -> None:
        """Cross-field rules of its recipes (``bad(key, why)`` makes the ``UserError``)."""

    def limits(self, recipe, profile, dims):
        """Recipe x profile x model rules, before any work; returns the build's ``graphs.contracts.Limits``."""

    def split(self, ckpt, recipe, limits) -> list:
        """The graphs to compile (``graphs.split.Graph``), their contracts sized by ``limits``."""

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        """Quantize per the recipe, lower, and write the artifacts under ``ctx.out``; consumes ``graphs``."""

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        """A runner (``backends.Runner``, with its ``backend`` name) per graph record of a manifest, on
        ``backend`` (None: the target's own); ``UserError`` when that backend cannot run them here."""

    def prepare_process(self) -> None:
        """Set up a process that will run built programs, before any library loads (the CLI's ``run``, ``verify``
        and ``bench`` call it for every registered target: the build's target is not known yet)."""

    def bench_notes(self, manifest: dict) -> list[str]:
        """Notes on how far a measurement of this target's build in this process can be trusted."""


class TargetBase:
    """The defaults of a target's optional parts: subclass it and set what differs."""

    default_profile: str | None = None
    quantize_parts: dict[str, tuple[Precision, ...]] = {}
    algorithms: tuple[QuantAlgorithm, ...] = (QuantAlgorithm.RTN,)
    default_group_size: int | None = None
    recipe_section: str | None = None
    recipe_options: type | None = None
    profile_options: type | None = None
    runtime_files: tuple[str, ...] = ()
    recipes_dir: Path = shipped_dir("recipes")
    profiles_dir: Path = shipped_dir("device_profiles")

    def check_recipe(self, recipe, bad) -> None:
        pass

    def prepare_process(self) -> None:
        pass

    def bench_notes(self, manifest: dict) -> list[str]:
        return []


# what every target must have (the rest has ``TargetBase``'s defaults)
_REQUIRED = ("name", "backend", "kv", "default_recipe", "precisions", "quantize_parts", "algorithms",
             "default_group_size", "recipe_section", "recipe_options", "profile_options", "runtime_files",
             "recipes_dir", "profiles_dir", "default_profile")
_METHODS = ("check_recipe", "limits", "split", "compile", "open_runners", "prepare_process", "bench_notes")


def check_target(target: object, where: str) -> None:
    """``UserError`` naming ``where`` (an entry point) unless ``target`` has every part of ``Target``."""
    missing = [a for a in _REQUIRED if not hasattr(target, a)]
    missing += [m for m in _METHODS if not callable(getattr(target, m, None))]
    if missing:
        raise UserError(f"{where}: is not a mobilevlm_export target (missing: {', '.join(missing)}; see "
                        "mobilevlm_export.targets.base.Target)")
    if not isinstance(target.name, str) or not target.name.isidentifier():
        raise UserError(f"{where}: the target's name must be an identifier (is {target.name!r})")
    if target.kv not in tuple(KVCache):
        raise UserError(f"{where}: kv must be one of {', '.join(KVCache)} (is {target.kv!r})")


def check_backend(target: str, backends: tuple[Backend, ...], backend: str | None) -> None:
    """``UserError`` for a ``--backend`` that does not run a ``target`` build."""
    if backend is not None and backend not in backends:
        raise UserError(f"--backend {backend}: {target} builds run on {' or '.join(backends)}")
