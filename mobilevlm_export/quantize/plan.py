"""The quantization stage's typed input and output: a ``QuantPlan`` (one ``PartPlan`` per graph part the target
quantizes, built from the recipe's ``[quantize.PART]`` tables) and the ``QuantResult`` the stage returns.

A plan says what to do per part; the stage of the target's form does it: ``quantize.onnx_stage`` rewrites
exported ONNX graphs to Q/DQ (orin), ``quantize.torchao`` quantizes torch modules before export (snapdragon).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mobilevlm_export.schema import Precision, QuantAlgorithm

if TYPE_CHECKING:  # the ONNX stage's report type; the plan itself needs neither onnx nor torch
    from mobilevlm_export.quantize.qdq_rewrite import QdqReport

FLOAT = (Precision.FP16, Precision.FP32)  # schemes that leave a part unquantized


@dataclass(frozen=True)
class PartPlan:
    """How one part is quantized: the recipe's ``[quantize.PART]`` table (an absent table: ``fp32``, rtn).

    ``group_size``: as the recipe gives it, ``None`` for the target's default (``QuantPlan.default_group_size``;
    a target may resolve it across the parts of one graph). ``calibration``: the part needs activation statistics
    of the float graph (w8a8's activation scales, AWQ's search, SmoothQuant's migration)."""

    part: str
    scheme: Precision = Precision.FP32
    group_size: int | None = None
    algorithm: QuantAlgorithm = QuantAlgorithm.RTN
    calibration: bool = False

    @classmethod
    def from_spec(cls, part: str, spec) -> PartPlan:
        """The plan of ``part`` from a recipe's quantize table (any object with ``scheme``, ``group_size`` and
        ``algorithm``: ``Recipe.quant(part)``)."""
        needs = spec.scheme == Precision.W8A8 or spec.algorithm in (QuantAlgorithm.AWQ, QuantAlgorithm.SMOOTHQUANT)
        return cls(part, spec.scheme, spec.group_size, spec.algorithm, needs)

    @property
    def quantized(self) -> bool:
        """Whether the part is quantized at all (``fp16``/``fp32`` keep it in float)."""
        return self.scheme not in FLOAT

    def group(self, default: int) -> int:
        """The group (block) size: the recipe's, else ``default``."""
        return self.group_size or default


@dataclass(frozen=True)
class QuantPlan:
    """One ``PartPlan`` per part the target quantizes, and the target's group size for a part that names none."""

    parts: Mapping[str, PartPlan]
    default_group_size: int

    @classmethod
    def from_recipe(cls, recipe, parts: Iterable[str], default_group_size: int) -> QuantPlan:
        """The plan of ``parts`` (the target's ``quantize_parts``) per ``recipe`` (its ``quant(part)``)."""
        return cls({p: PartPlan.from_spec(p, recipe.quant(p)) for p in parts}, default_group_size)

    def part(self, name: str) -> PartPlan:
        """The plan of ``name`` (a part the plan does not list: kept float)."""
        return self.parts.get(name) or PartPlan(name)


@dataclass(frozen=True)
class QuantResult:
    """What the stage did: the build log's lines, and per rewritten graph its report (``quantize.qdq_rewrite``'s
    ``QdqReport``, ONNX stage only)."""

    log: tuple[str, ...]
    reports: Mapping[str, QdqReport] = field(default_factory=dict)
