"""What a person reads, as a CI log shows it: every command run with stdout not a terminal (typer's runner, even
with COLUMNS=40) prints no cut number or name (no "…"), summaries one ``name: value`` per line (never
``key=value, key=value``), the parity summary per graph and output kind (every tensor with --verbose), a failing row
whole with its tolerance; the thread count used; predictions with overheads and a validity range; the rich table
on a terminal folds rather than cuts. One demo-checkpoint ONNX build (with a device profile, for its prediction)
serves the module."""

from __future__ import annotations

import io
import re

import pytest
from typer.testing import CliRunner

from mobilevlm_export import render
from mobilevlm_export.cli import app
from mobilevlm_export.profiles import load_profile
from mobilevlm_export.verify import E2EResult, Metric, VerifyReport

runner = CliRunner()
ELLIPSIS = ("…", "...")  # rich's cut, and a cut by hand
KEY_VALUE_RUN = re.compile(r"\w=\S+, \w+=")  # the old `key=value, key=value` summaries
BENCH_ARGS = ["--runs", "2", "--warmup", "0", "--prompt-tokens", "4", "--decode-tokens", "2"]


def _invoke(args, columns: int = 40):
    """The CLI with stdout not a terminal and a console width that would have cut every table."""
    res = runner.invoke(app, args, env={"COLUMNS": str(columns)})
    return res


def _no_cut(text: str) -> None:
    for mark in ELLIPSIS:
        assert mark not in text, text
    assert not KEY_VALUE_RUN.search(text), text


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    """`build --target onnx` of the demo checkpoint: (its directory, its output)."""
    out = tmp_path_factory.mktemp("render") / "onnx"
    res = _invoke(["build", "--target", "onnx", "-o", str(out), "--no-simplify"])
    assert res.exit_code == 0, res.output
    return out, res.stdout


def _section(text: str, title_start: str) -> list[str]:
    """The indented ``name: value`` lines under the line starting with ``title_start``."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    body = []
    for line in lines[i + 1:]:
        if not line.startswith("  "):
            break
        body.append(line)
    return body


def test_build_summary_in_a_log(demo_build):
    out_dir, out = demo_build
    _no_cut(out)
    host = dict(line.strip().split(": ", 1) for line in _section(out, "host (measured here):"))
    assert host["backend"] == "onnxruntime" and re.fullmatch(r"[1-9]\d* \(the runtime's default\)", host["threads"])
    assert float(host["decode_tokens_per_s"]) > 0 and "prefill_positions" in host
    assert "Per-graph parity: worst tensor per graph and output kind" in out and out.rstrip().endswith("PASSED")


def test_build_prediction_in_a_log(demo_build):
    """A device build's summary (the onnx build's manifest with a snapdragon-8-gen-3 prediction of its costs):
    the prediction one figure per line, marked outside the validity range, no vision time of 0."""
    import json

    from rich.console import Console

    out_dir, _ = demo_build
    manifest = json.loads((out_dir / "manifest.json").read_text())
    prof = load_profile("snapdragon-8-gen-3")
    manifest["latency"]["predicted"] = prof.predict(**manifest["costs"], prefill_positions=208)
    buf = io.StringIO()
    render.print_build(Console(file=buf, width=40), manifest)
    out = buf.getvalue()
    _no_cut(out)
    predicted = dict(line.strip().split(": ", 1) for line in _section(out, "predicted for snapdragon-8-gen-3"))
    assert predicted["validity"].startswith("below the model's validity range"), predicted
    assert float(predicted["vision ms"]) >= 10  # a tiny encoder still pays the per-image overhead
    assert 0 < float(predicted["decode tok/s"]) <= 1 / 0.5e-3  # at most 1 / the per-pass overhead


def _summary_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("Per-graph parity"))
    assert lines[i + 1].split()[:3] == ["graph", "kind", "tensors"], lines[i + 1]
    rows = []
    for line in lines[i + 2:]:
        if line.startswith("backend:"):
            break
        rows.append(line.split())
    return rows


def test_verify_summary_and_verbose(demo_build):
    out_dir, _ = demo_build
    res = _invoke(["verify", str(out_dir)])
    assert res.exit_code == 0, res.output
    _no_cut(res.stdout)
    rows = _summary_rows(res.stdout)
    # one row per graph and output kind: the decoder's logits and KV, each other graph's embeddings
    assert [(r[0], r[1]) for r in rows] == [("decoder", "logits"), ("decoder", "KV"), ("embed_tokens", "embeddings"),
                                             ("projector", "embeddings"), ("vision_encoder", "embeddings")]
    kv = rows[1]
    assert int(kv[2]) == 16 and kv[3].split("/")[1].startswith("present.") and kv[-1] == "yes"
    assert all(re.fullmatch(r"-?\d+(\.\d+)?(e[-+]\d+)?|inf|nan", c) for c in kv[4:7]), kv  # whole numbers

    res = _invoke(["verify", str(out_dir), "--verbose"])
    assert res.exit_code == 0, res.output
    _no_cut(res.stdout)
    lines = res.stdout.splitlines()
    assert lines[0] == "Per-graph parity: every tensor (21)" and lines[1].split()[:3] == ["graph", "case", "output"]
    tensors = [line.split() for line in lines[2:2 + 21]]
    assert {t[2] for t in tensors} >= {"logits", "present.3.value", "image_features", "inputs_embeds"}


def test_failing_row_whole_with_its_tolerance(demo_build, tmp_path):
    out_dir, _ = demo_build
    strict = tmp_path / "strict.toml"
    strict.write_text('[recipe]\ntarget = "onnx"\nprecision = "fp32"\n[tolerances.present]\nmax_abs = 1e-12\n')
    res = _invoke(["verify", str(out_dir), "--recipe", str(strict)])
    assert res.exit_code == 1, res.output
    _no_cut(res.stdout)
    kv = next(r for r in _summary_rows(res.stdout) if r[1] == "KV")
    failed = int(kv[-3].lstrip("("))
    assert kv[-4:-3] == ["NO"] and kv[-2:] == ["of", "16)"] and failed >= 1, kv
    fails = [line for line in res.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == failed and all("present." in f for f in fails)
    m = re.fullmatch(r"FAIL decoder/(decode|prefill) (present\.\d+\.(key|value)): max_abs = (\S+) \(tolerance 1e-12\) "
                     r"\| max abs (\S+), mean abs (\S+), cosine (\d\.\d{7}), top-1 -, KL -", fails[0])
    assert m, fails[0]
    assert float(m[4]) > 1e-12 and float(m[5]) > 0
    assert res.stdout.rstrip().endswith("FAILED")


def test_bench_in_a_log(demo_build):
    out_dir, _ = demo_build
    res = _invoke(["bench", str(out_dir), *BENCH_ARGS, "--threads", "1"])
    assert res.exit_code == 0, res.output
    _no_cut(res.stdout)
    lines = res.stdout.splitlines()
    assert lines[1].split() == ["metric", "p50", "p90", "min", "max"]
    decode = next(line for line in lines if line.startswith("decode tok/s"))
    assert len(decode.split()) == 6 and all(float(x) > 0 for x in decode.split()[2:])
    host = dict(line.strip().split(": ", 1) for line in _section(res.stdout, "host:"))
    assert host["threads"] == "1" and host["backend"] == "onnxruntime"
    res = _invoke(["bench", str(out_dir), *BENCH_ARGS, "--profile", "snapdragon-8-gen-3"])
    _no_cut(res.stdout)
    host = dict(line.strip().split(": ", 1) for line in _section(res.stdout, "host:"))
    assert re.fullmatch(r"\d+ \(the runtime's default\)", host["threads"]), host
    predicted = dict(line.strip().split(": ", 1) for line in _section(res.stdout, "predicted for snapdragon-8-gen-3"))
    assert predicted["validity"].startswith("below") and float(predicted["vision ms"]) > 0


def test_inspect_in_a_log():
    res = _invoke(["inspect"])
    assert res.exit_code == 0, res.output
    _no_cut(res.stdout)
    out = res.stdout
    assert "  projector: ldpnetv2" in out and "\nParameters\ncomponent" in out
    # every input of the decoder named, none left out as "... N more"
    assert sum(line.startswith("    in:  past_key_values.") for line in out.splitlines()) == 8


def _report(failing: bool) -> VerifyReport:
    fail = [{"metric": "max_abs", "value": 0.0123456, "tolerance": 1e-3, "severity": 12.3}] if failing else []
    metrics = [Metric("decoder", "prefill", "logits", 1e-5, 1e-6, 0.9999999, 1.0, 1e-9),
               Metric("decoder", "prefill", "present.0.key", 0.0123456, 1e-4, 0.99999, None, None, failures=fail),
               Metric("decoder", "decode", "present.0.key", 2e-6, 1e-7, 1.0, None, None),
               Metric("a_graph_with_a_rather_long_name", "batch", "image_features_of_some_length", 1e-6, 1e-7, 1.0,
                      None, None)]
    return VerifyReport(metrics, [E2EResult("1.png", "What?", [1, 2], [1, 2])], 1.0, "onnxruntime")


def test_summary_worst_row_per_group():
    summary = render.parity_summary(_report(True).metrics)
    assert [(g["graph"], g["kind"], g["tensors"], g["failed"]) for g in summary] == [
        ("a_graph_with_a_rather_long_name", "embeddings", 1, 0), ("decoder", "logits", 1, 0), ("decoder", "KV", 2, 1)]
    assert summary[2]["worst"].case == "prefill"  # the failing row, not the larger count


@pytest.mark.parametrize("terminal", [False, True])
def test_report_never_cut(terminal):
    """Plain (not a terminal): every name and number whole, lines at full width; rich (a 50-column terminal):
    cells fold, nothing ends in an ellipsis. Both: the failing row whole, on one line."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=50, color_system=None)
    render.print_report(console, _report(True), verbose=True)
    text = buf.getvalue()
    assert "…" not in text  # on a terminal cells fold
    if not terminal:
        for whole in ("a_graph_with_a_rather_long_name", "image_features_of_some_length", "0.0123", "0.9999900"):
            assert whole in text, whole
    assert "FAIL decoder/prefill present.0.key: max_abs = 0.01235 (tolerance 0.001)" in text
    if not terminal:
        assert any(len(line) > 50 for line in text.splitlines())  # full width, not wrapped


def test_predictions_overheads_and_validity():
    prof = load_profile("orin-agx-64gb")
    weights = 24 * (4 * 2048 * 2048 + 3 * 2048 * 5632) + 32000 * 2048  # MobileLLaMA-1.4B linears + lm_head
    calibrated = prof.predict(weights * 4.5 / 8, 2.0 * weights, 2.0 * 302e6 * 577)
    assert calibrated["validity"] is None and calibrated["decode_tokens_per_s"] == pytest.approx(65.3, rel=0.02)
    tiny = prof.predict(371712.0, 1441792.0, 103989248.0, prefill_positions=208)  # the demo's recorded costs
    assert tiny["validity"].startswith("below the model's validity range")
    assert tiny["vision_ms"] >= prof.image_overhead_ms > 0
    assert tiny["decode_tokens_per_s"] < 1e3 / prof.token_overhead_ms
    assert tiny["prefill_tokens_per_s"] < 208 * 1e3 / prof.token_overhead_ms
    assert prof.predict(100 * weights, 200.0 * weights, 1e12)["validity"].startswith("above")


def test_quiet_unless_asked(monkeypatch):
    import logging

    from mobilevlm_export import quiet

    logger = logging.getLogger("torchao")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    quiet.quiet_libraries(shown=True)
    assert logger.level == logging.NOTSET  # asked for: left alone
    monkeypatch.setenv(quiet.DEBUG_ENV, "1")
    quiet.quiet_libraries()
    assert logger.level == logging.NOTSET


def test_suite_entry_point_quiets_the_libraries(monkeypatch):
    from mobilevlm_export import quiet
    from mobilevlm_export.benchsuite import __main__ as suite_main
    from mobilevlm_export.benchsuite import suite

    calls = []
    monkeypatch.setattr(quiet, "quiet_libraries", lambda *a: calls.append("quiet"))
    monkeypatch.setattr(suite, "run_suite", lambda cfg, log: calls.append("run"))
    assert suite_main.main(["--shape", "demo"]) == 0
    assert calls == ["quiet", "run"]
