"""Every shipped recipe and device profile loads and validates (no optional dependency needed); bad files name
the file and key; a recipe survives its manifest round trip."""

from __future__ import annotations

import pytest

from mobilevlm_export.errors import UserError
from mobilevlm_export.profiles import PROFILES_DIR, load_profile
from mobilevlm_export.recipes import RECIPES_DIR, Recipe, load_recipe
from mobilevlm_export.schema import Precision
from mobilevlm_export.targets import registry


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r.name == path.stem and r.tolerance("logits").max_abs is not None
    assert r.target in registry() and path.stem.startswith(f"{r.target}-")
    assert isinstance(r.precision, Precision)
    assert Recipe.from_dict(r.to_dict(), source=str(path)) == r  # what a manifest stores reads back the same


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_profiles_load(path):
    prof = load_profile(path)
    assert prof.name == path.stem and prof.target in registry() and path.stem.startswith(f"{prof.target}-")
    assert all(isinstance(p, Precision) for p in prof.precisions)
    pred = prof.predict(1e9, 3e9, 1e11)
    assert pred["decode_tokens_per_s"] > 0 and pred["vision_ms"] > 0


ONNX = '[recipe]\ntarget = "onnx"\nprecision = "fp32"\n'


@pytest.mark.parametrize("text,key", [
    ('[recipe]\ntarget = "snapdragon"\nprecision = "fp8"\n', "recipe.precision"),
    ('[recipe]\ntarget = "mars"\nprecision = "fp32"\n', "recipe.target"),
    (ONNX + '[tolerances.logits]\nmax_abz = 1\n', "tolerances.logits.max_abz"),
    (ONNX + '[tolerances.logits]\nmax_abs = -1\n', "tolerances.logits.max_abs"),
    (ONNX + '[tolerances.logits]\nmax_abs = nan\n', "tolerances.logits.max_abs"),
    (ONNX + '[e2e]\ntoken_agreement_min = 2\n', "e2e.token_agreement_min"),
    (ONNX + '[e2e]\nmax_new_tokens = true\n', "e2e.max_new_tokens"),
    (ONNX + '[executorch]\nmax_cache = 8\n', "executorch"),
    ('[recipe]\ntarget = "onnx"\n', "recipe.precision"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        load_recipe(f)
    assert str(f) in str(err.value)


@pytest.mark.parametrize("old,new,key", [
    ("bandwidth_gbps = 51.2", "bandwidth_gbps = -1", "device.bandwidth_gbps"),
    ("compute_efficiency = 0.08", "compute_efficiency = 1.5", "device.compute_efficiency"),
    ('precisions = ["fp32", "8da8w", "8da4w"]', 'precisions = ["fp32", "fp5"]', "device.precisions"),
    ("max_context = 2048 ", "max_context = 2048.5 ", "device.max_context"),
    ('target = "snapdragon"', 'target = "mars"', "device.target"),
    ("threads = 4 ", "thread = 4 ", "device.thread"),
])
def test_bad_profile_names_file_and_key(tmp_path, old, new, key):
    text = (PROFILES_DIR / "snapdragon-888.toml").read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new))
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        load_profile(bad)
    assert str(bad) in str(err.value)


def test_unknown_recipe_name():
    with pytest.raises(UserError, match="--recipe nope"):
        load_recipe("nope")
