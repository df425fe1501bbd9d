"""The quantization stage's typed input: ``quantize.plan`` built from the shipped recipes."""

from __future__ import annotations

from mobilevlm_export.quantize.plan import PartPlan, QuantPlan
from mobilevlm_export.recipes import load_recipe
from mobilevlm_export.schema import Precision, QuantAlgorithm
from mobilevlm_export.targets.orin import DEFAULT_BLOCK, OrinTarget
from mobilevlm_export.targets.snapdragon import DEFAULT_GROUP_SIZE, SnapdragonTarget


def test_orin_plans():
    int4 = QuantPlan.from_recipe(load_recipe("orin-int4"), OrinTarget.quantize_parts, DEFAULT_BLOCK)
    assert set(int4.parts) == set(OrinTarget.quantize_parts) and int4.default_group_size == 128
    assert int4.part("decoder") == PartPlan("decoder", Precision.INT4, 128, QuantAlgorithm.AWQ, True)
    assert int4.part("lm_head").calibration and int4.part("lm_head").quantized
    # a part the recipe has no table for is kept float and needs no calibration
    assert int4.part("image_encoder") == PartPlan("image_encoder") and not int4.part("image_encoder").quantized
    assert int4.part("not-a-part") == PartPlan("not-a-part")
    int8 = QuantPlan.from_recipe(load_recipe("orin-int8"), OrinTarget.quantize_parts, DEFAULT_BLOCK)
    assert int8.part("decoder").scheme == Precision.W8A8 and int8.part("decoder").calibration  # activation scales
    fp16 = QuantPlan.from_recipe(load_recipe("orin-fp16"), OrinTarget.quantize_parts, DEFAULT_BLOCK)
    assert not any(p.quantized or p.calibration for p in fp16.parts.values())


def test_snapdragon_plan_groups():
    plan = QuantPlan.from_recipe(load_recipe("snapdragon-8da4w"), SnapdragonTarget.quantize_parts,
                                 DEFAULT_GROUP_SIZE)
    recipe = load_recipe("snapdragon-8da4w")
    for part in SnapdragonTarget.quantize_parts:
        q = recipe.quant(part)
        p = plan.part(part)
        assert (p.scheme, p.group_size, p.algorithm) == (q.scheme, q.group_size, q.algorithm)
        assert p.group(DEFAULT_GROUP_SIZE) == (q.group_size or DEFAULT_GROUP_SIZE) and not p.calibration
