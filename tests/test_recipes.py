"""Every shipped recipe loads; bad recipes name the file and key."""

from __future__ import annotations

import pytest

from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import RECIPES_DIR, load_recipe


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r.name == path.stem and r.tolerance("logits").max_abs is not None


@pytest.mark.parametrize("text,key", [
    ('[recipe]\ntarget = "snapdragon"\nprecision = "fp8"\n', "recipe.precision"),
    ('[recipe]\ntarget = "mars"\nprecision = "fp32"\n', "recipe.target"),
    ('[recipe]\ntarget = "onnx"\nprecision = "fp32"\n[tolerances.logits]\nmax_abz = 1\n', "tolerances.logits.max_abz"),
    ('[recipe]\ntarget = "onnx"\nprecision = "fp32"\n[e2e]\ntoken_agreement_min = 2\n', "e2e.token_agreement_min"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        load_recipe(f)
    assert str(f) in str(err.value)


def test_unknown_recipe_name():
    with pytest.raises(UserError, match="--recipe nope"):
        load_recipe("nope")
