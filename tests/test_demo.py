"""The bundled demo checkpoint: real layout, held-out accuracy >= 95%, and the ONNX pipeline's parity on it."""

from __future__ import annotations

import json

from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
from mobilevlm_export.demo.evaluate import per_kind


def test_demo_checkpoint_layout_and_size():
    d = demo_checkpoint_dir()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["mm_projector_type"] == "ldpnetv2" and cfg["model_type"] == "mobilevlm"
    assert (d / "tokenizer.model").is_file() and (d / "model.safetensors").is_file()
    total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    samples = d.parent / "samples"
    total += sum(f.stat().st_size for f in samples.iterdir())
    assert total < 10 * 2**20
    assert len(json.loads((samples / "questions.json").read_text())) >= 6


def test_demo_module_answers_every_question_and_prints_nothing_else():
    """``python -m mobilevlm_export.demo`` (``make demo``'s first step) in a fresh process: every shipped question
    answered as expected, and no library notes (torchao's kernel loads, torch's pytree deprecations) on stderr."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_LOGS", "PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.demo"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith("all answers correct") and res.stderr == "", res.stderr


def test_demo_heldout_accuracy(reference_heldout):
    accuracy, records = reference_heldout(150)  # heldout_accuracy(n=150), once per session (conftest)
    assert len(records) == 150
    assert accuracy >= 0.95, (accuracy, per_kind(records))


def test_demo_onnx_pipeline_matches_reference_on_every_shipped_question(demo_build_onnx, demo_builds, tmp_path):
    """`export` (the alias; conftest's, built once per session) and `build --target onnx` on the demo:
    the same graphs (the pinned `build --target onnx` ones, tests/data/artifact_pins.json, where the pinned library
    versions are installed; else a fresh build), every shipped question's greedy tokens identical to the reference."""
    from test_artifact_pins import PINS, pins_of, versions_differ

    demo, exported = demo_builds["onnx", "onnx-fp32"]  # `export -o DIR --json`

    def graphs(pins: dict[str, str]) -> dict[str, str]:
        return {p: h for p, h in pins.items() if p.startswith("graphs/")}

    if versions_differ():
        from typer.testing import CliRunner

        from mobilevlm_export.cli import app

        res = CliRunner().invoke(app, ["build", "--target", "onnx", "--no-bench", "-o", str(tmp_path / "built")])
        assert res.exit_code == 0, res.output
        built = graphs(pins_of(tmp_path / "built"))
    else:
        built = graphs(PINS["recipes"]["onnx-fp32"])
    assert built == graphs(pins_of(demo)) and len(built) == 4
    v = exported["verification"]
    assert v["token_agreement"] == 1.0 and all(r["match"] for r in v["e2e"])
    assert len(v["e2e"]) == len(json.loads((demo_checkpoint_dir().parent / "samples" / "questions.json").read_text()))
    for m in v["metrics"]:
        if m["output"] == "logits":
            assert m["max_abs"] <= 1e-4 and m["top1"] == 1.0
