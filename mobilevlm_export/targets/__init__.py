"""The target registry: the one place a deployment target is named. Adding a target = a module here (a class
implementing ``base.Target``), its entry below, its ``recipes/<name>-*.toml``, its ``device_profiles/<name>-*.toml``
(when it has devices) and its tests."""

from __future__ import annotations

from mobilevlm_export.errors import UserError
from mobilevlm_export.targets.base import CompileContext, CompileRecord, Target
from mobilevlm_export.targets.onnx import OnnxTarget
from mobilevlm_export.targets.orin import OrinTarget
from mobilevlm_export.targets.snapdragon import SnapdragonTarget

TARGETS: dict[str, Target] = {t.name: t for t in (OnnxTarget(), SnapdragonTarget(), OrinTarget())}


def get_target(name: str, flag: str = "--target") -> Target:
    """The registered target ``name``; ``UserError`` naming ``flag`` otherwise."""
    if name not in TARGETS:
        raise UserError(f"{flag} {name}: unknown target (known: {', '.join(TARGETS)})")
    return TARGETS[name]


__all__ = ["TARGETS", "CompileContext", "CompileRecord", "Target", "get_target"]
