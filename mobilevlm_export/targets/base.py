"""The interface every deployment target implements, and the record its compile stage returns.

The pipeline (``pipeline.build``) runs the stages once, in one order, for every target; a target supplies only
what differs: its recipe/profile rules (``check_recipe``, ``check``), its split, its compile (quantize + lower +
write) and the runners of what it wrote (``open_runners``, torch-free where the backend's runtime is).
Target modules import heavy libraries (torch, executorch, onnx) inside their methods only, so the registry
imports fast and the artifact side stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mobilevlm_export.errors import UserError
from mobilevlm_export.schema import Precision, QuantAlgorithm


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
    backend: str              # the runtime that runs the artifacts ("onnxruntime", "executorch")
    kv: str                   # the decoder's KV contract: "dynamic" (cache in/out) or "static" (in place)
    default_recipe: str
    default_profile: str | None
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

    def check(self, recipe, profile, dims):
        """Recipe x profile x model rules, before any work; returns the build's ``graphs.contracts.Limits``."""

    def split(self, ckpt, recipe, limits) -> list:
        """The graphs to compile (``graphs.split.Graph``), their contracts sized by ``limits``."""

    def compile(self, graphs: list, recipe, profile, ctx: CompileContext) -> CompileRecord:
        """Quantize per the recipe, lower, and write the artifacts under ``ctx.out``; consumes ``graphs``."""

    def open_runners(self, root: Path, graphs: dict[str, dict], threads: int | None,
                     backend: str | None = None) -> dict:
        """A runner (``backends.Runner``, with its ``backend`` name) per graph record of a manifest, on
        ``backend`` (None: the target's own); ``UserError`` when that backend cannot run them here."""


def check_backend(target: str, backends: tuple[str, ...], backend: str | None) -> None:
    """``UserError`` for a ``--backend`` that does not run a ``target`` build."""
    if backend is not None and backend not in backends:
        raise UserError(f"--backend {backend}: {target} builds run on {' or '.join(backends)}")
