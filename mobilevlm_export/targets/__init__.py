"""The target registry: the one place deployment targets are found, by name.

A target is one module: a class implementing ``base.Target`` (its recipe and profile rules, split, compile, the
runners of what it wrote and its process hooks), its recipes and, where it has devices, its device profiles. The
built-in targets are listed below; any installed distribution adds its own through the entry-point group
``mobilevlm_export.targets`` (as pytest finds its plugins), without a change to this package::

    # the plugin's pyproject.toml
    [project.entry-points."mobilevlm_export.targets"]
    webgpu = "acme_mvlm.webgpu:WebGPUTarget"

An entry point names a ``Target`` class (instantiated without arguments) or instance; its ``name`` must equal the
entry point's name and must not be taken. The registry is read once per process, on first use, so importing it
stays cheap (target modules import torch, onnx and executorch inside their methods only).
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from mobilevlm_export.errors import UserError
from mobilevlm_export.targets.base import CompileContext, CompileRecord, Target, check_target
from mobilevlm_export.targets.onnx import OnnxTarget
from mobilevlm_export.targets.orin import OrinTarget
from mobilevlm_export.targets.snapdragon import SnapdragonTarget

ENTRY_POINT_GROUP = "mobilevlm_export.targets"
BUILTIN = (OnnxTarget, SnapdragonTarget, OrinTarget)


@functools.cache
def registry() -> dict[str, Target]:
    """Every target, by name: the built-in ones, then those of the ``mobilevlm_export.targets`` entry points.
    ``UserError`` naming the entry point when one cannot be loaded, is not a target, or takes a used name."""
    found: dict[str, Target] = {}
    for cls in BUILTIN:
        target = cls()
        found[target.name] = target
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:  # a plugin's import failure is the plugin's: name it, never a traceback of ours
            raise UserError(f"{where}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        target = obj() if isinstance(obj, type) else obj
        check_target(target, where)
        if target.name != ep.name:
            raise UserError(f"{where}: the target's name is {target.name!r}, not {ep.name!r}")
        if target.name in found:
            raise UserError(f"{where}: target {target.name!r} is already registered")
        found[target.name] = target
    return found


def target_names() -> tuple[str, ...]:
    return tuple(registry())


def find_target(name: object) -> Target | None:
    """The target registered as ``name``, or None (``name`` may be any JSON value read from a file)."""
    return registry().get(name) if isinstance(name, str) else None


def get_target(name: str, flag: str = "--target") -> Target:
    """The registered target ``name``; ``UserError`` naming ``flag`` otherwise."""
    target = find_target(name)
    if target is None:
        raise UserError(f"{flag} {name}: unknown target (known: {', '.join(registry())})")
    return target


def prepare_runtime_processes() -> None:
    """Every target's ``prepare_process`` hook, in a process about to run built programs (before the build's
    target is known, and before any runtime library loads)."""
    for target in registry().values():
        target.prepare_process()


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "CompileContext", "CompileRecord", "Target", "find_target",
           "get_target", "prepare_runtime_processes", "registry", "target_names"]
