"""The CLI through Typer's runner: JSON output, and every bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import copy_checkpoint
from typer.testing import CliRunner

from mobilevlm_export.cli import app
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX

runner = CliRunner()


def test_inspect_json(tiny_ckpt):
    res = runner.invoke(app, ["inspect", str(tiny_ckpt), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["architecture"]["projector"] == "ldpnetv2"
    assert info["dims"]["image_tokens"] == 144 and info["dims"]["patches"] == 576
    p = info["parameters"]
    assert p["total"] == p["vision"] + p["projector"] + p["decoder"] + p["embeddings"] + p["lm_head"]
    assert p["embeddings"] == 512 * 64
    assert [g["name"] for g in info["graphs"]] == ["vision_encoder", "projector", "embed_tokens", "decoder"]
    assert "weights from the checkpoint" in info["vision_tower_source"]


def test_inspect_table(tiny_ckpt):
    res = runner.invoke(app, ["inspect", str(tiny_ckpt)])
    assert res.exit_code == 0, res.output
    assert "ldpnetv2" in res.stdout and "past_key_values.0.key" in res.stdout


def test_generate_json(tiny_ckpt, image_file):
    res = runner.invoke(app, ["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "What?",
                              "--max-new-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["prompt_ids"].count(IMAGE_TOKEN_INDEX) == 1 and out["prompt_ids"][0] == 1
    assert 1 <= len(out["output_ids"]) <= 5 and isinstance(out["text"], str)
    assert out["image_tokens"] == 144


def _expect_bad_input(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in res.output
    for n in needles:
        assert n in err, (n, err)
    return err


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_directory(tmp_path):
    _expect_bad_input(["inspect", str(tmp_path / "nope")], str(tmp_path / "nope"), "does not exist")


def test_missing_config(tmp_path):
    _expect_bad_input(["inspect", str(tmp_path)], "config.json", "missing")


def test_not_a_vision_language_checkpoint(tiny_ckpt, tmp_path):
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    _edit_config(ck, mm_vision_tower=None)
    _expect_bad_input(["inspect", str(ck)], "mm_vision_tower", "config.json")


def test_unknown_projector(tiny_ckpt, tmp_path):
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    _edit_config(ck, mm_projector_type="qformer")
    _expect_bad_input(["inspect", str(ck)], "mm_projector_type", "qformer")


def test_missing_projector_type_means_linear(ckpt_factory, tmp_path):
    ck = copy_checkpoint(ckpt_factory("linear", "safetensors", 3), tmp_path / "ck")
    _edit_config(ck, mm_projector_type=None)
    res = runner.invoke(app, ["inspect", str(ck), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["architecture"]["projector"] == "linear"


def test_missing_tensor(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    state = load_file(ck / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, ck / "model.safetensors")
    _expect_bad_input(["inspect", str(ck)], "missing tensor", "model.layers.1.mlp.up_proj.weight",
                      "model.safetensors")


def test_wrong_shape(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    state = load_file(ck / "model.safetensors")
    state["model.mm_projector.peg.peg.0.weight"] = state["model.mm_projector.peg.peg.0.weight"][:32].clone()
    save_file(state, ck / "model.safetensors")
    _expect_bad_input(["inspect", str(ck)], "model.mm_projector.peg.peg.0.weight", "[32, 1, 3, 3]",
                      "[64, 1, 3, 3]")


def test_unknown_vision_tower_without_flag(tiny_ckpt, ckpt_factory, tmp_path):
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    _edit_config(ck, mm_vision_tower="someone/some-tower")
    _expect_bad_input(["inspect", str(ck)], "mm_vision_tower", "someone/some-tower", "--vision-tower")
    # ... and --vision-tower resolves it (config and weights from there; a v2 tower dir holds no weights)
    _expect_bad_input(["inspect", str(ck), "--vision-tower", str(tiny_ckpt / "vision_tower")], "no weights")
    tower = ckpt_factory("ldpnet", "safetensors", 2) / "vision_tower"
    res = runner.invoke(app, ["inspect", str(ck), "--vision-tower", str(tower), "--json"])
    assert res.exit_code == 0, res.output


def test_unreadable_image(tiny_ckpt, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    _expect_bad_input(["generate", str(tiny_ckpt), "--image", str(bad), "--prompt", "q"], "--image", str(bad))
    _expect_bad_input(["generate", str(tiny_ckpt), "--image", str(tmp_path / "none.jpg"), "--prompt", "q"],
                      "--image", "no such file")


def test_two_image_tags(tiny_ckpt, image_file):
    _expect_bad_input(["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "<image> vs <image>"],
                      "--prompt", "2 '<image>'")


def test_truncated_safetensors(tiny_ckpt, tmp_path):
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_bad_input(["inspect", str(ck)], "model.safetensors", "truncated")


def test_prompt_too_long(tiny_ckpt, image_file):
    _expect_bad_input(["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "word " * 3000],
                      "context")


def test_console_script_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", "inspect", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr


def test_wrongly_typed_config_value_is_one_line(tiny_ckpt, tmp_path):
    """A config value of the wrong type (transformers' strict config fields) is bad input: exit 2, one stderr line
    naming config.json and the key, no library noise around it (a fresh process, as a user runs it)."""
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    _edit_config(ck, intermediate_size="256")
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", "inspect", str(ck)], capture_output=True,
                         text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.json" in lines[0] and "intermediate_size" in lines[0], res.stderr
