"""The benchmark suite (``mobilevlm_export.benchsuite``) end to end on the demo checkpoint: two of our rows (ONNX
fp32, the reference eager) and one cheap peer (ONNX Runtime's MatMulNBits int4 on our fp32 decoder) in one round,
a results JSON of a stable schema, BENCHMARKS.md with its sections and plot, the host's bandwidth measured, and a
second run that rebuilds nothing. Units: row selection, the derived g128 recipe, the cache, the costs and the
profiles' calibration fit, the ratio and spread arithmetic. The ExecuTorch rows with export_llm, the paired A/B
and the per-operator profile take minutes: marked slow."""

from __future__ import annotations

import json
import re

import pytest

from mobilevlm_export import bench
from mobilevlm_export.benchsuite import cache, predict, prepare, rows, suite, timing
from mobilevlm_export.benchsuite.__main__ import main as suite_main
from mobilevlm_export.errors import UserError

FAST_ROWS = ["eager-fp32", "onnx-fp32", "ort-int4-b32"]
RESULT_KEYS = {"schema", "shape", "environment", "package", "bandwidth", "compute_roof", "settings", "rows",
               "versus_export_llm", "rounds", "frontier", "predictions", "notes", "before_after"}
ROW_KEYS = {"name", "kind", "backend", "recipe", "precision", "target", "group_size", "decoder_only", "versus",
            "frontier", "commit", "path", "build", "artifact_bytes", "decoder_bytes_per_token", "costs",
            "host_limit_decode_tokens_per_s", "bandwidth_fraction", "decode_tokens_per_s", "prefill_tokens_per_s",
            "ttft_ms", "vision_ms", "prefill_ms", "vision_share", "vision_roof", "peak_rss_mb", "accuracy",
            "delegation", "schemes"}
METRIC_KEYS = {"p50", "spread_rounds", "spread_runs", "runs", "rounds"}
ACCURACY_KEYS = {"heldout_accuracy", "heldout_correct", "heldout_n", "kl_max", "kl_mean", "top1_min", "logits_cases",
                 "e2e_kl_mean", "e2e_kl_max", "e2e_top1", "e2e_positions", "e2e_pairs", "note", "cached", "wall_s",
                 "provenance"}
ARGS = ["--shape", "demo", "--rounds", "1", "--runs", "1", "--warmup", "0", "--threads", "1",
        "--prompt-tokens", "8", "--decode-tokens", "4", "--accuracy-samples", "3", "--bandwidth-mb", "16",
        "--roof-repeats", "2"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The suite run twice on the demo into one --out: (first results, second results, out, logs)."""
    out = tmp_path_factory.mktemp("suite")
    logs = []
    first = suite.run_suite(suite.SuiteConfig(shape="demo", only=FAST_ROWS, rounds=1, runs=1, warmup=0, threads=1,
                                              out=out, prompt_tokens=8, decode_tokens=4, accuracy_samples=3,
                                              bandwidth_mb=16, roof_repeats=3), log=logs.append)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("builds/demo/*/artifacts/manifest.json")}
    assert suite_main([*ARGS, "--only", ",".join(FAST_ROWS), "--out", str(out)]) == 0
    second = json.loads((out / "results-demo.json").read_text())
    return first, second, out, logs, mtimes


def test_results_schema_and_figures(two_runs):
    results = two_runs[0]
    assert set(results) == RESULT_KEYS and results["schema"] == rows.SCHEMA
    assert results["shape"]["name"] == "demo"
    assert set(results["environment"]) >= {"commit", "cpu_model", "cpu_flags", "logical_cores", "versions", "date"}
    assert results["bandwidth"]["gbps"] > 0 and len(results["bandwidth"]["samples_gbps"]) == 5
    roof = results["compute_roof"]
    assert roof["gops"] >= roof["gops_median"] > 0 and len(roof["samples_ms"]) == 3 and roof["threads"] == 1
    assert roof["shape"] == {"m": 577, "k": 1024, "n": 4096} and roof["scheme"] == "8da8w"
    assert results["settings"]["executorch_process_env"] == {"OMP_NUM_THREADS": "1"}
    assert [r["name"] for r in results["rows"]] == FAST_ROWS
    for row in results["rows"]:
        assert set(row) == ROW_KEYS, row["name"]
        for m in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            assert set(row[m]) == METRIC_KEYS and row[m]["p50"] > 0 and len(row[m]["rounds"]) == 1
        assert 0 < row["bandwidth_fraction"] and row["host_limit_decode_tokens_per_s"] > 0
        assert set(row["accuracy"]) == ACCURACY_KEYS and row["accuracy"]["heldout_n"] == 3
        if row["name"] != "eager-fp32":  # the whole program against the reference on the held-out pairs
            acc = row["accuracy"]
            assert acc["e2e_pairs"] == 3 and acc["e2e_positions"] >= 3, acc
            assert -1e-9 <= acc["e2e_kl_mean"] <= acc["e2e_kl_max"] + 1e-12, acc  # (float64 rounding near 0)
            assert acc["e2e_top1"] >= 0.5 and (row["name"] != "onnx-fp32" or acc["e2e_kl_max"] < 1e-4)
        if row["decoder_only"]:  # the peer: decoder only, no time to first token
            assert row["ttft_ms"] is None and row["vision_share"] is None
        else:
            assert row["ttft_ms"]["p50"] >= row["vision_ms"]["p50"] > 0 and 0 < row["vision_share"] < 1
        if row["costs"] and row["vision_ms"]:  # the vision encoder's GEMM rate against the roof
            gops = row["costs"]["vision_ops"] / (row["vision_ms"]["p50"] / 1e3) / 1e9
            assert row["vision_roof"]["gops"] == pytest.approx(gops, rel=1e-3)
            assert row["vision_roof"]["fraction"] == pytest.approx(gops / roof["gops"], abs=1e-3)
        else:
            assert row["vision_roof"] is None
    by = {r["name"]: r for r in results["rows"]}
    assert by["eager-fp32"]["accuracy"]["kl_max"] == 0 and by["eager-fp32"]["build"] is None
    assert by["onnx-fp32"]["accuracy"]["kl_max"] < 1e-6 and by["onnx-fp32"]["accuracy"]["top1_min"] == 1
    # the int4 peer was verified afresh (its copied manifest holds the fp32 build's verification): a non-zero KL
    assert by["ort-int4-b32"]["accuracy"]["note"] == "verified afresh"
    assert 0 < by["ort-int4-b32"]["accuracy"]["kl_max"] < 0.1
    assert by["ort-int4-b32"]["artifact_bytes"] < by["onnx-fp32"]["artifact_bytes"]
    assert by["ort-int4-b32"]["decoder_bytes_per_token"] < by["onnx-fp32"]["decoder_bytes_per_token"] / 4
    # the fp32 build's recorded costs are what the analytic count of the demo's dims gives
    assert by["onnx-fp32"]["costs"] == pytest.approx(predict.analytic_costs(
        rows_demo_dims(), 32, vocab=512), rel=1e-9)
    assert by["eager-fp32"]["decoder_bytes_per_token"] == by["onnx-fp32"]["decoder_bytes_per_token"]
    assert len(results["rounds"]) == 1 and set(results["rounds"][0]["rows"]) == set(FAST_ROWS)
    assert results["predictions"]["calibration"] and results["predictions"]["rows"] == []  # no device target


def rows_demo_dims():
    from mobilevlm_export.checkpoint.synthetic import Dims

    return Dims(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=256, vocab=512, vision_hidden=64,
                vision_layers=3, vision_heads=2, vision_intermediate=128)


def test_second_run_rebuilds_nothing(two_runs):
    first, second, out, logs, mtimes = two_runs
    assert any(line.startswith("building onnx-fp32") for line in logs)
    for row in second["rows"]:
        if row["build"] is not None:
            assert row["build"]["cached"] is True, row["name"]
        assert row["accuracy"]["cached"] is True, row["name"]
    assert {r["name"]: (r["build"] or {}).get("key") for r in first["rows"]} == \
        {r["name"]: (r["build"] or {}).get("key") for r in second["rows"]}
    assert {p: p.stat().st_mtime_ns for p in out.glob("builds/demo/*/artifacts/manifest.json")} == mtimes
    assert not list(out.rglob("*.partial"))
    # the key and its record sit next to each build
    fp32 = next(r for r in second["rows"] if r["name"] == "onnx-fp32")
    entry = out / "builds" / "demo" / f"onnx-fp32-{fp32['build']['key'][:12]}"
    stored = json.loads((entry / cache.KEY_FILE).read_text())
    assert stored["key"] == fp32["build"]["key"] and stored["record"]["recipe"]["recipe"]["name"] == "onnx-fp32"
    assert set(stored["record"]["package"]) == {"version", "source_sha256", "libraries"}
    assert set(fp32["build"]["provenance"]) == {"commit", "dirty", "date"}


def test_benchmarks_md_sections_and_plot(two_runs):
    out = two_runs[2]
    text = (out / "BENCHMARKS.md").read_text()
    for needle in ("# Benchmarks", "## the bundled demo checkpoint (trained, tiny) (`--shape demo`)", "- Machine: ",
                   "- Memory bandwidth, measured: **", "- Versions: ", "- Run: ", "| row | backend | recipe | "
                   "decode tok/s | of host limit | prefill tok/s | TTFT ms (vision share) | "
                   "vision GEMM GOPS (of int8 roof) | artifact bytes |", "int8 GEMM roof, measured: **",
                   "| `onnx-fp32` | ONNX Runtime | onnx-fp32 |", "| `ort-int4-b32` |", "decoder only",
                   "## Device profiles: predicted vs published", "| orin-agx-64gb | decode tok/s |", "Builds (cached",
                   "Processes that run ExecuTorch programs (ours and export_llm's) have `OMP_NUM_THREADS=1`"):
        assert needle in text, needle
    image = re.search(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert image and (out / image.group(1)).is_file()
    assert (out / image.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_executorch_processes_get_one_openmp_thread(tmp_path, monkeypatch):
    """A fresh process that runs ExecuTorch programs (a paired A/B, a .pte's or export_llm's timing) starts with
    ``EXECUTORCH_PROCESS_ENV``; one that times ONNX Runtime or eager PyTorch keeps the suite's environment."""
    seen = []

    def fake_run(cmd, **kw):
        seen.append(kw.get("env"))
        spec = json.loads(open(cmd[-1]).read())
        with open(spec["result"], "w") as f:
            f.write("{}")
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(timing.subprocess, "run", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    (tmp_path / "pte").mkdir()
    (tmp_path / "pte" / "model.pte").write_bytes(b"")
    (tmp_path / "onnx").mkdir()
    for task in ({"task": "ab"}, {"task": "time", "kind": "ours", "path": str(tmp_path / "pte")},
                 {"task": "time", "kind": rows.EXPORT_LLM, "path": str(tmp_path / "x.pte")}):
        assert timing.worker(task) == {}
        assert seen.pop()["OMP_NUM_THREADS"] == "1"
    for task in ({"task": "time", "kind": "ours", "path": str(tmp_path / "onnx")},
                 {"task": "time", "kind": rows.EAGER, "path": str(tmp_path)}, {"task": "accuracy"}):
        timing.worker(task)
        assert seen.pop() is None  # (inherits OMP_NUM_THREADS=7)


def test_rows_selection_and_errors(tmp_path):
    assert [r.name for r in rows.select("onnx-fp32, eager-fp32")] == ["eager-fp32", "onnx-fp32"]
    assert len(rows.select(None)) == len(rows.ROWS)
    with pytest.raises(UserError, match="--only nope: unknown"):
        rows.select("nope")
    with pytest.raises(UserError, match="--only nope: unknown"):
        suite.run_suite(suite.SuiteConfig(shape="demo", only=["nope"], out=tmp_path / "o"))
    with pytest.raises(UserError, match="--rounds 0"):
        suite.run_suite(suite.SuiteConfig(shape="demo", rounds=0, out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # refused before any work
    assert suite_main(["--shape", "demo", "--only", "nope", "--out", str(tmp_path / "o")]) == 2


def test_pair_accuracy_names_its_stand_in():
    acc = {"et-8da4w": {"e2e_kl_mean": 1.0}, "export_llm-scheme-g128": {"e2e_kl_mean": 2.0}}
    got = suite.pair_accuracy(rows.BY_NAME["et-8da4w"], rows.BY_NAME["export_llm-g128"], acc)
    assert got == {"ours": {"e2e_kl_mean": 1.0}, "export_llm": None,
                   "export_llm_scheme_built_by_us": "export_llm-scheme-g128",
                   "export_llm_scheme_accuracy": {"e2e_kl_mean": 2.0}}
    assert suite.pair_accuracy(rows.BY_NAME["et-8da4w-g32"], rows.BY_NAME["export_llm-g32"], {})[
        "export_llm_scheme_built_by_us"] == "export_llm-scheme-g32"


def test_versus_section_renders_equal_groups_and_defaults():
    from mobilevlm_export.benchsuite import report

    side = {"median_ratio": 1.02, "rounds_ours_at_least_as_fast": 3, "rounds": 4, "ratios": [1.0, 1.02, 1.03, 0.99]}
    ab = {"pairs": 20, "prompt_tokens": 64, "burst": 8,
          "prefill": {"ratio_median": 1.01, "pairs_ours_at_least_as_fast": 15},
          "decode": {"ratio_median": 1.005, "ratio_ci95": [0.98, 1.03], "pairs_ours_at_least_as_fast": 12}}
    acc = {"heldout_accuracy": 1.0, "e2e_kl_mean": 3e-6, "e2e_top1": 1.0, "kl_max": 1e-7}
    entry = {"interleaved": {"prefill": side, "decode": side}, "ab": ab, "profile_ops": None,
             "accuracy": {"ours": acc, "export_llm": None, "export_llm_scheme_built_by_us": "export_llm-scheme-g128",
                          "export_llm_scheme_accuracy": acc}}
    versus = {"g128": {**entry, "group_size": 128, "export_llm_group_size": 128, "ours": "et-8da4w-g128",
                       "export_llm": "export_llm-g128"},
              "defaults": {**entry, "group_size": 64, "export_llm_group_size": 128, "ours": "et-8da4w",
                           "export_llm": "export_llm-g128"}}
    text = "\n".join(report._versus({"versus_export_llm": versus}))
    assert "| g128 | `et-8da4w-g128` vs `export_llm-g128` | 4 interleaved rounds" in text
    assert "| defaults | `et-8da4w` vs `export_llm-g128` | paired A/B in one process, 20 pairs" in text
    assert "1.020 (3 of 4)" in text and "1.005 [0.980, 1.030] (12 of 20)" in text and "1.010 (15 of 20)" in text
    assert "- defaults: ours `et-8da4w`: held-out 1.000" in text and "(our `export_llm-scheme-g128`)" in text


def test_median_confidence_interval():
    from mobilevlm_export.benchsuite.ab import median_ci95

    assert median_ci95([float(x) for x in range(20, 0, -1)]) == [6.0, 15.0]  # 20 pairs: 6th and 15th smallest
    assert median_ci95(list(range(1, 31))) == [10, 21]
    assert median_ci95([3, 1, 2, 5, 4, 6]) == [1, 6]  # 6 values: the extremes cover the median with p = 31/32
    assert median_ci95([1, 2, 3, 4, 5]) is None


def test_timing_order_keeps_pairs_adjacent():
    names = lambda rs: [r.name for r in rs]  # noqa: E731
    order = names(rows.timing_order(rows.select(None)))
    assert sorted(order) == sorted(rows.BY_NAME)
    for ours, peer in (("et-8da4w-g32", "export_llm-g32"), ("et-8da4w", "export_llm-g128"),
                       ("et-8da4w-g128", "export_llm-g128")):
        assert abs(order.index(ours) - order.index(peer)) == 1, (ours, peer, order)
    assert names(rows.timing_order(rows.select("export_llm-g32,eager-fp32,et-8da4w-g32"))) == [
        "eager-fp32", "et-8da4w-g32", "export_llm-g32"]


def test_report_skips_results_of_another_schema(tmp_path):
    from mobilevlm_export.benchsuite import report

    (tmp_path / "results-1.7b.json").write_text(json.dumps({"schema": "mobilevlm_export.benchsuite/1",
                                                            "shape": {"name": "1.7b"}}))
    assert report.load_results(tmp_path) == []
    assert "## " not in report.write_report(tmp_path, plot=False).read_text()


def test_derived_recipes(tmp_path):
    """Each derived recipe loads, differs from its shipped base only in the quantize tables it names (and its
    name), and is written into the cache once."""
    import tomllib

    from mobilevlm_export.recipes import RECIPES_DIR, load_recipe

    text, path = rows.recipe_text(rows.BY_NAME["et-8da4w-g128"], tmp_path)
    recipe = load_recipe(path)
    assert recipe.name == rows.G128 and recipe.target == "snapdragon"
    assert {part: q.group_size for part, q in recipe.quantize.items() if q.group_size} == {
        "decoder": 128, "lm_head": 128, "embed_tokens": 128}
    assert recipe.quantize["image_encoder"].scheme.value == "8da8w" and path.read_text() == text
    for name, (base, changes, _) in rows.DERIVED.items():
        row = next(r for r in (*rows.ROWS, *rows.STAND_INS.values()) if r.recipe == name)
        text, path = rows.recipe_text(row, tmp_path)
        assert load_recipe(path).name == name
        derived, shipped = tomllib.loads(text), tomllib.loads((RECIPES_DIR / f"{base}.toml").read_text())
        assert derived["quantize"] == {k: v for k, v in (shipped["quantize"] | changes).items() if v is not None}
        assert {k: v for k, v in derived.items() if k not in ("quantize", "recipe")} == {
            k: v for k, v in shipped.items() if k not in ("quantize", "recipe")}
        assert derived["recipe"] == shipped["recipe"] | {"name": name}
    stand_in = load_recipe(rows.recipe_text(rows.STAND_INS["export_llm-g128"], tmp_path)[1])
    assert set(stand_in.quantize) == {"decoder", "lm_head"} and stand_in.quantize["lm_head"].group_size == 128
    assert rows.to_toml({"a": {"s": 'q"\\', "b": True, "f": 1e-05, "t": {"i": 3}}}) == (
        '[a]\ns = "q\\"\\\\"\nb = true\nf = 1e-05\n\n[a.t]\ni = 3\n')


def test_cache_entry_builds_once_and_keys_inputs(tmp_path):
    calls = []

    def make(d):
        calls.append(d)
        (d / "x").write_text("built")
        return {"rc": 0}

    a, info = cache.entry(tmp_path, "thing", {"recipe": "A"}, make, log=lambda _: None)
    assert info["cached"] is False and (a / "x").read_text() == "built" and "wall_s" in info
    b, info2 = cache.entry(tmp_path, "thing", {"recipe": "A"}, make, log=lambda _: None)
    assert b == a and info2["cached"] is True and len(calls) == 1
    c, _ = cache.entry(tmp_path, "thing", {"recipe": "B"}, make, log=lambda _: None)
    assert c != a and len(calls) == 2
    # an interrupted build leaves its .partial sibling, and the next run redoes it

    def boom(_):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.entry(tmp_path, "thing", {"recipe": "C"}, boom, log=lambda _: None)
    assert len(list(tmp_path.glob(".thing-*.partial"))) == 1
    _, info3 = cache.entry(tmp_path, "thing", {"recipe": "C"}, make, log=lambda _: None)
    assert info3["cached"] is False and not list(tmp_path.glob(".thing-*.partial")) and len(calls) == 3
    assert cache.shape_record("1.7b")["dims"]["hidden"] == 2048 and cache.shape_record("1.7b")["dtype"] == "float16"
    assert set(cache.shape_record("1.7b")) >= {"torch", "writer"}  # the synthetic weights' maker is in the key


def test_source_digest_covers_the_samples_builds_read(tmp_path, monkeypatch):
    """A build's golden data and calibration come from the package's sample pairs: changing one is a new key."""
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(cache.PACKAGE / "demo" / "samples", pkg / "demo" / "samples")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "benchsuite").mkdir()
    (pkg / "benchsuite" / "b.py").write_text("y = 1\n")
    monkeypatch.setattr(cache, "PACKAGE", pkg)

    def fresh() -> str:
        cache.source_digest.cache_clear()
        return cache.source_digest()

    try:
        before = fresh()
        (pkg / "benchsuite" / "b.py").write_text("y = 2\n")  # the suite's own code makes no build
        assert fresh() == before
        (pkg / "demo" / "samples" / "questions.json").write_text("[]")
        assert fresh() != before
    finally:
        cache.source_digest.cache_clear()
    assert set(cache.shape_record("demo")["files"]) >= {"config.json", "model.safetensors"}


def test_cache_entry_made_once_by_processes_side_by_side(tmp_path):
    """Two makers of one entry at once (``--build-only`` splits side by side): the second waits for the first's
    lock and finds the entry made; neither deletes the other's work."""
    import threading

    started, release, calls, logs, results = threading.Event(), threading.Event(), [], [], {}

    def slow(d):
        calls.append(d)
        started.set()
        release.wait(10)
        (d / "x").write_text("built")
        return {"rc": 0}

    def run(tag, make):
        results[tag] = cache.entry(tmp_path, "thing", {"recipe": "A"}, make, log=logs.append)

    first = threading.Thread(target=run, args=("first", slow))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=("second", slow))
    second.start()
    for _ in range(100):  # until the second is waiting on the lock
        if any(line.startswith("waiting for another suite process") for line in logs):
            break
        threading.Event().wait(0.05)
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1 and results["first"][1]["cached"] is False and results["second"][1]["cached"] is True
    assert results["first"][0] == results["second"][0] and (results["second"][0] / "x").read_text() == "built"
    assert any(line.startswith("waiting for another suite process building thing") for line in logs)


def test_failed_compile_check_is_not_cached(tmp_path, monkeypatch):
    """Exit 1 with no build committed (a failed lint or operator check) is a failed build, not a parity miss to
    time: nothing is cached, so the next run tries again."""
    from mobilevlm_export.benchsuite import peers
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    def fake(cmd, cwd, log, env=None):
        log.write_text("FAILED: lint\n")
        return 1, 1.0, 10.0

    monkeypatch.setattr(peers, "run_measured", fake)
    with pytest.raises(RuntimeError, match="exit 1, nothing built"):
        prepare.build_ours(rows.BY_NAME["onnx-fp32"], demo_checkpoint_dir(), "demo", tmp_path, 1, lambda _: None)
    assert not [p for p in (tmp_path / "builds" / "demo").iterdir() if not p.name.endswith((".lock", ".partial"))]


def test_calibration_fit_against_published_figures():
    fit = predict.calibration_fit()
    assert len(fit) == len(predict.CALIBRATION)
    costs = predict.analytic_costs()
    # MobileLLaMA-1.4B reads ~1.30e9 decoder weights per token: 0.73 GB at q4_k's 4.5 bits, 2.6 GOP per token
    assert costs["decoder_bytes_per_token"] == pytest.approx(0.73e9, rel=0.01)
    assert costs["decoder_ops_per_token"] == pytest.approx(2.6e9, rel=0.01)
    for row in fit:
        mid = sum(row["published"]) / 2 if isinstance(row["published"], list) else row["published"]
        assert row["ratio"] == pytest.approx(row["predicted"] / mid, rel=0.01)
    orin = next(r for r in fit if r["profile"] == "orin-agx-64gb" and r["published"] == 65.3)
    assert orin["ratio"] == pytest.approx(1.0, abs=0.02)  # the figure the Orin profile is calibrated on
    preds = predict.predictions([{"name": "x", "target": "snapdragon", "costs": costs}])
    assert {p["profile"] for p in preds} == {"snapdragon-888", "snapdragon-8-gen-3"}


def test_round_arithmetic():
    m = timing.metric([10.0, 12.0, 11.0], [0.1, 0.3, 0.2])
    assert m["p50"] == 11 and m["spread_runs"] == 0.2 and m["rounds"] == [10.0, 12.0, 11.0]
    assert m["spread_rounds"] == pytest.approx(bench.stats([10, 12, 11])["spread"])
    assert timing.metric([5.0], [0.0])["spread_rounds"] is None
    # every run of every round pooled: the median of 6 runs, not the median of the 2 rounds' p50s
    pooled = timing.metric([10.0, 20.0], [0.1, 0.1], [9.0, 10.0, 11.0, 12.0, 19.0, 21.0])
    assert pooled["p50"] == 11.5 and pooled["runs"] == 6 and pooled["rounds"] == [10.0, 20.0]
    sample = {"stats": {m: {"p50": 1.0, "spread": 0.0} for m in timing.TEXT_METRICS}}
    row = timing.summarize_row("a", [{"rows": {"a": {"peak_rss_mb": 1, "text": {**sample, "samples": {
        m: [1.0, 2.0, 3.0] for m in timing.TEXT_METRICS}}, "image": None}}}] * 2)
    assert row["decode_tokens_per_s"]["p50"] == 2.0 and row["decode_tokens_per_s"]["runs"] == 6
    assert row["ttft_ms"] is None and row["vision_share"] is None

    def rec(decode, prefill):
        return {"text": {"stats": {"decode_tokens_per_s": {"p50": decode}, "prefill_tokens_per_s": {"p50": prefill}}}}

    rounds = [{"rows": {"a": rec(11, 20), "b": rec(10, 25)}}, {"rows": {"a": rec(9, 30), "b": rec(10, 25)}}]
    r = timing.ratios("a", "b", rounds)
    assert r["decode"] == {"median_ratio": 1.0, "rounds_ours_at_least_as_fast": 1, "rounds": 2, "ratios": [1.1, 0.9]}
    assert r["prefill"]["ratios"] == [0.8, 1.2]


def test_memory_bandwidth():
    bw = bench.memory_bandwidth(8, 2, 2)
    assert bw["gbps"] > 0 and bw["threads"] == 2 and len(bw["samples_gbps"]) == 2
    assert bw["gbps"] == max(bw["samples_gbps"])
    with pytest.raises(UserError):
        bench.memory_bandwidth(0)


@pytest.mark.slow
def test_executorch_rows_export_llm_ab_and_op_profile(tmp_path):
    """Ours 8da4w g32 against export_llm g32 on the demo (a build and an export of minutes each): ratios from the
    interleaved rounds, the paired A/B and the per-operator profile, in the results and BENCHMARKS.md."""
    results = suite.run_suite(suite.SuiteConfig(
        shape="demo", only=["et-8da4w-g32", "export_llm-g32"], rounds=2, runs=1, warmup=0, threads=1, out=tmp_path,
        prompt_tokens=16, decode_tokens=8, ab=True, ab_pairs=3, profile_ops=True, profile_rounds=2,
        accuracy_samples=3, bandwidth_mb=16), log=print)
    v = results["versus_export_llm"]["g32"]
    assert v["ours"] == "et-8da4w-g32" and v["export_llm"] == "export_llm-g32"
    assert v["interleaved"]["decode"]["rounds"] == 2 and v["interleaved"]["decode"]["median_ratio"] > 0
    assert v["ab"]["pairs"] == 3 and v["ab"]["decode"]["ratio_median"] > 0
    assert v["profile_ops"]["ours"]["decode_steps"] > 0 and v["profile_ops"]["export_llm"]["decode_steps"] > 0
    by = {r["name"]: r for r in results["rows"]}
    assert by["export_llm-g32"]["accuracy"] is None and by["et-8da4w-g32"]["accuracy"]["heldout_n"] == 3
    assert {p["profile"] for p in results["predictions"]["rows"]} == {"snapdragon-888", "snapdragon-8-gen-3"}
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for needle in ("**Ours / export_llm at the same group size**", "paired A/B in one process, 3 pairs",
                   "Per-operator profile (ETDump)", "Predicted on the devices", "| `export_llm-g32` |"):
        assert needle in text, needle


def _frontier_row(name, decode, ttft, kl, frontier=True):
    metric = lambda v: {"p50": v, "spread_runs": 0.01, "spread_rounds": None, "rounds": [v]}  # noqa: E731
    return {"name": name, "frontier": frontier, "schemes": {"decoder": "8da4w g64"}, "artifact_bytes": 10,
            "decode_tokens_per_s": metric(decode), "ttft_ms": metric(ttft), "vision_ms": metric(ttft / 2),
            "accuracy": {"e2e_kl_mean": kl, "e2e_kl_max": 2 * kl, "e2e_top1": 1.0, "kl_max": kl / 2,
                         "heldout_accuracy": 1.0}}


def test_frontier_points_and_report(tmp_path):
    from mobilevlm_export.benchsuite import frontier, report

    table = [_frontier_row("et-8da4w", 25.0, 900.0, 0.02),      # the default
             _frontier_row("et-8da4w-g32", 21.0, 800.0, 0.01),  # more accurate, slower decode, faster TTFT
             _frontier_row("et-8da4w-g128", 20.0, 950.0, 0.03),  # dominated on both
             _frontier_row("et-8da4w-v4", 25.0, 700.0, 0.02),   # ties the default on decode, faster TTFT
             _frontier_row("onnx-fp32", 99.0, 1.0, 0.0, frontier=False)]  # not a frontier row: left out
    fr = frontier.frontier(table)
    on = {p["row"]: p["on_frontier"] for p in fr["points"]}
    assert list(on) == ["et-8da4w", "et-8da4w-g32", "et-8da4w-g128", "et-8da4w-v4"] and fr["default"] == "et-8da4w"
    assert on["et-8da4w"] == {"decode_tokens_per_s": True, "ttft_ms": False}  # v4: same decode and KL, faster TTFT
    assert on["et-8da4w-g32"] == {"decode_tokens_per_s": True, "ttft_ms": True}
    assert on["et-8da4w-g128"] == {"decode_tokens_per_s": False, "ttft_ms": False}
    assert on["et-8da4w-v4"] == {"decode_tokens_per_s": True, "ttft_ms": True}
    assert frontier.frontier(table[:1] + table[4:]) is None  # one point is no frontier
    assert frontier.frontier([{**table[0], "accuracy": None}, table[1]]) is None  # unmeasured accuracy: no point
    name = frontier.plot_frontier(fr, "t", tmp_path / "f.png")
    assert name == "f.png" and (tmp_path / "f.png").stat().st_size > 1000
    lines = report._frontier({"frontier": fr, "shape": {"name": "demo"}}, name)
    text = "\n".join(lines)
    assert "| `et-8da4w` (default) | 8da4w g64 / fp32 |" in text and "| no / no |" in text
    assert text.count("\n| `") == 4 and "frontier-" not in text and "(benchmarks/plots/f.png)" in text


def test_vision_fraction_and_roof_arguments():
    from mobilevlm_export.benchsuite.roof import gemm_roof, vision_fraction

    roof = {"gops": 800.0}
    assert vision_fraction(2e11, 1000.0, roof) == {"gops": 200.0, "fraction": 0.25}  # 200 GOP in 1 s
    assert vision_fraction(None, 1000.0, roof) is None and vision_fraction(2e11, None, roof) is None
    assert vision_fraction(2e11, 1000.0, None) is None
    with pytest.raises(UserError, match="gemm roof"):
        gemm_roof(0)


def test_before_row_source_and_errors(tmp_path):
    """``--before REF``: the commit resolved in this checkout (a clear error for an unknown one), the package at
    that commit extracted once (with the CLI that builds its program), and its row beside today's default."""
    import subprocess

    with pytest.raises(UserError, match="--before no-such-ref: not a commit"):
        prepare.resolve_commit("no-such-ref")
    head = prepare.resolve_commit("HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    logs = []
    src = prepare.source_at(head, tmp_path, logs.append)
    assert (src / prepare.CLI).is_file() and (src / "recipes" / "snapdragon-8da4w.toml").is_file()
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", head], cwd=cache.PACKAGE.parent,
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()) == sorted(listed)
    assert prepare.source_at(head, tmp_path, logs.append) == src and len(logs) == 1  # extracted once
    selected = suite.with_before(rows.select("eager-fp32"), head, tmp_path, logs.append)
    assert [r.name for r in selected] == ["eager-fp32", f"et-8da4w@{head[:7]}", "et-8da4w"]
    before = selected[1]
    assert before.kind == rows.BEFORE and before.commit == head and before.recipe == "snapdragon-8da4w"
    assert before.group_size == 64 or before.group_size is not None
    assert rows.schemes(before, tmp_path, str(src))["decoder"].startswith("8da4w g")


def test_before_after_ratios_and_section():
    """Per-round after / before ratios (lower time and higher rate count as faster), their median and 95 % CI from
    6 rounds, and the BENCHMARKS.md section that shows them with builds, delegation and accuracy."""
    from mobilevlm_export.benchsuite import report

    def rec(ttft, decode):
        image = {"stats": {m: {"p50": ttft * f} for m, f in (("ttft_ms", 1), ("vision_ms", 0.5), ("prefill_ms", 0.5))}}
        text = {"stats": {"decode_tokens_per_s": {"p50": decode}, "prefill_tokens_per_s": {"p50": 100.0}}}
        return {"image": image, "text": text}

    rounds = [{"rows": {"b": rec(2000, 10), "a": rec(1000 + 10 * i, 11)}} for i in range(6)]
    ratios = timing.before_after("b", "a", rounds)
    assert ratios["ttft_ms"]["median_ratio"] == 0.512 and ratios["ttft_ms"]["rounds_after_faster"] == 6
    assert ratios["ttft_ms"]["ci95"] == [0.5, 0.525]
    decode = ratios["decode_tokens_per_s"]
    assert decode["median_ratio"] == 1.1 and decode["rounds_after_faster"] == 6
    assert ratios["prefill_tokens_per_s"]["rounds_after_faster"] == 0  # equal rates: not faster
    assert timing.before_after("b", "a", rounds[:4])["ttft_ms"]["ci95"] is None

    def metric(p50):
        return {"p50": p50, "spread_runs": 0.01, "spread_rounds": 0.02, "runs": 18, "rounds": [p50] * 6}

    def row(name, ttft, **extra):
        return {"name": name, "recipe": "snapdragon-8da4w", "schemes": {"decoder": "8da4w g64"},
                "ttft_ms": metric(ttft), "vision_ms": metric(ttft / 2), "prefill_ms": metric(ttft / 2),
                "prefill_tokens_per_s": metric(100.0), "decode_tokens_per_s": metric(10.0), "vision_share": 0.5,
                "build": {"wall_s": 700.0, "peak_rss_mb": 7000.0}, "artifact_bytes": 800,
                "delegation": [{"method": "vision_encoder", "delegated_nodes": 900, "portable_nodes": 1,
                                "delegated_subgraphs": 1}],
                "accuracy": {"heldout_accuracy": 1.0, "e2e_kl_mean": 3e-6, "e2e_top1": 1.0, "kl_max": 1e-7}, **extra}

    results = {"rows": [row("et-8da4w@abcdef1", 2000.0), row("et-8da4w", 1000.0)], "rounds": rounds,
               "before_after": {"before": "et-8da4w@abcdef1", "after": "et-8da4w", "commit": "abcdef1" * 5,
                                "ratios": ratios}}
    text = "\n".join(report._before_after(results))
    assert "### Before / after: `et-8da4w@abcdef1` vs `et-8da4w`" in text and "same 6 interleaved rounds" in text
    assert "| time to first token, ms (image + prompt) | 2000 | 1000 | 0.512 [0.500, 0.525] | 6 of 6 |" in text
    assert "| `vision_encoder` delegation | 1 subgraphs, 900 XNNPACK / 1 portable nodes |" in text
    assert "| build wall s | 700 | 700 | 1.000 (one build each) | |" in text
    assert report._before_after({"before_after": None}) == []


@pytest.mark.slow
def test_before_row_end_to_end(tmp_path):
    """``--before HEAD`` on the demo: the default program as the last commit made it, built by that commit's code
    from its git archive, timed and measured in the same round as today's, and the before / after section."""
    results = suite.run_suite(suite.SuiteConfig(
        shape="demo", only=["et-8da4w"], before="HEAD", rounds=1, runs=1, warmup=0, threads=1, out=tmp_path,
        prompt_tokens=8, decode_tokens=4, accuracy_samples=3, bandwidth_mb=16, roof_repeats=2, plot=False))
    head = prepare.resolve_commit("HEAD")
    before, after = (next(r for r in results["rows"] if r["name"] == n) for n in (f"et-8da4w@{head[:7]}", "et-8da4w"))
    assert before["kind"] == rows.BEFORE and before["commit"] == head and after["kind"] == rows.OURS
    assert f"/et-8da4w@{head[:7]}-" in before["path"] and before["build"]["key"] != after["build"]["key"]
    assert before["accuracy"]["heldout_n"] == 3 and before["ttft_ms"]["p50"] > 0
    assert [d["method"] for d in before["delegation"]] == ["vision_encoder", "token_embedding", "text_decoder"]
    ba = results["before_after"]
    assert ba["before"] == before["name"] and ba["after"] == "et-8da4w" and ba["commit"] == head
    assert ba["ratios"]["ttft_ms"]["rounds"] == 1 and ba["ratios"]["ttft_ms"]["ci95"] is None
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"### Before / after: `{before['name']}` vs `et-8da4w`" in text
    assert f"snapdragon-8da4w as of {head[:7]}" in text
