"""`bench DIR` on a tiny ONNX build: every metric positive and ordered (min <= p50 <= p90 <= max), a stable JSON
schema, the environment recorded, requests that do not fit refused (never clamped), spread notes; the stats, the
source state and the CPU reading as units."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime

import pytest
from typer.testing import CliRunner

from mobilevlm_export import bench
from mobilevlm_export.cli import app
from mobilevlm_export.errors import UserError
from mobilevlm_export.pipeline import BuildConfig, build
from mobilevlm_export.runtime.artifacts import open_artifacts

runner = CliRunner()
TINY = ["--runs", "2", "--warmup", "1", "--prompt-tokens", "4", "--decode-tokens", "2"]
HOST_KEYS = {"backend", "threads", "vision_ms", "prompt_tokens", "image_in_prompt", "prefill_positions", "prefill_ms",
             "prefill_tokens_per_s", "ttft_ms", "decode_tokens", "decode_tokens_per_s", "peak_rss_mb", "runs",
             "warmup", "stats", "samples", "notes", "threads_requested"}
STAT_KEYS = {"p50", "p90", "min", "max", "mean", "spread"}
ENV_KEYS = {"commit", "dirty", "versions", "python", "os", "machine", "cpu_model", "cpu_flags", "logical_cores",
            "threads", "omp_num_threads", "date"}


@pytest.fixture(scope="module")
def built(tiny_ckpt, samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "onnx"
    build(BuildConfig(ckpt=tiny_ckpt, out=out, target="onnx", bench=False, simplify=False, samples=samples))
    return out


def _bench(out, *args):
    return runner.invoke(app, ["bench", str(out), *args])


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_runtime_process_gets_one_openmp_thread_only_before_pytorch_loads(monkeypatch):
    import os
    import sys

    import torch  # noqa: F401  (loaded: its OpenMP has read the environment; too late to set it)

    from mobilevlm_export.backends.executorch import openmp_contention, prepare_runtime_process

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    prepare_runtime_process()
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `run`/`bench`/`verify` process
    prepare_runtime_process()
    assert os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's setting is kept
    prepare_runtime_process()
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert openmp_contention(None) is None and openmp_contention(1) is None
    assert "PyTorch has 2 OpenMP threads" in openmp_contention(2)


def test_stats_of_synthetic_timings():
    s = bench.stats([1, 1, 1, 2])
    assert set(s) == STAT_KEYS
    assert (s["p50"], s["p90"], s["min"], s["max"], s["mean"]) == (1, 1.7, 1, 2, 1.25)
    assert s["spread"] == pytest.approx(0.7)  # (p90 - p10) / p50 = (1.7 - 1) / 1
    notes = bench.noisy({"vision_ms": s, "prefill_ms": bench.stats([5, 5, 5])})
    assert len(notes) == 1 and notes[0].startswith("vision_ms: spread") and "70.0%" in notes[0]
    assert bench.stats([3.0]) == {"p50": 3, "p90": 3, "min": 3, "max": 3, "mean": 3, "spread": 0}


def test_bench_json_schema_figures_and_environment(built):
    res = _bench(built, "--threads", "1", *TINY, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    manifest_profile = open_artifacts(built).manifest.get("profile")
    assert set(result) == {"artifacts", "target", "host", "environment"} | ({"predicted"} if manifest_profile
                                                                            else set())
    host = result["host"]
    assert set(host) == HOST_KEYS
    # the runtime that ran it (an orin bundle without recorded engines runs on ONNX Runtime, and says so)
    assert host["backend"] == {"onnx": "onnxruntime", "orin": "onnxruntime", "snapdragon": "executorch"}[
        result["target"]]
    assert set(host["stats"]) == set(bench.METRICS) == set(host["samples"])
    for metric, s in host["stats"].items():
        values = host["samples"][metric]  # every timed run, which the stats summarize
        assert len(values) == host["runs"] and min(values) == s["min"] and max(values) == s["max"], metric
        assert set(s) == STAT_KEYS, metric
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["max"] and s["min"] <= s["mean"] <= s["max"], (metric, s)
        assert s["spread"] >= 0
        if metric in host:
            assert host[metric] == s["p50"], metric
    dims = open_artifacts(built).manifest["model"]["dims"]
    assert host["prefill_positions"] == 4 + dims["image_tokens"] and host["image_in_prompt"] is True
    assert (host["runs"], host["warmup"], host["threads"], host["decode_tokens"]) == (2, 1, 1, 2)
    assert isinstance(host["notes"], list) and host["peak_rss_mb"] > 0

    env = result["environment"]
    assert set(env) == ENV_KEYS
    assert env["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["commit"])
    assert env["dirty"] in (None, True, False) and (env["dirty"] is None) == (env["commit"] is None)
    assert isinstance(env["cpu_flags"], list) and set(env["cpu_flags"]) <= set(bench.CPU_FLAGS)
    assert env["cpu_model"] and env["logical_cores"] >= 1 and env["threads"] == 1
    assert env["versions"]["mobilevlm_export"] and env["python"] == env["versions"]["python"]
    assert datetime.fromisoformat(env["date"]).utcoffset().total_seconds() == 0


def test_text_only_runs_no_vision_encoder(built, monkeypatch):
    """`--text-only`: the vision encoder is not run (vision 0 ms, time to first token = prefill), the prefill covers
    the text tokens only, and the JSON keeps its keys."""
    from mobilevlm_export.runtime.generator import VLMGenerator

    def no_vision(self, pixels):
        raise AssertionError("the vision encoder ran for a text-only request")

    monkeypatch.setattr(VLMGenerator, "image_embeds", no_vision)
    res = _bench(built, "--text-only", *TINY, "--json")
    assert res.exit_code == 0, res.output
    host = json.loads(res.stdout)["host"]
    assert set(host) == HOST_KEYS and set(host["stats"]) == set(bench.METRICS)
    assert host["image_in_prompt"] is False and host["prefill_positions"] == 4
    assert host["vision_ms"] == 0 and set(host["stats"]["vision_ms"].values()) == {0}
    assert host["ttft_ms"] == host["prefill_ms"] and host["stats"]["ttft_ms"] == host["stats"]["prefill_ms"]
    assert host["prefill_ms"] > 0

def test_prediction_uses_the_profile_stored_in_the_manifest(built, tmp_path):
    """A build made with `--profile ./custom.toml` (no profile of its name to load again): `bench` without
    --profile predicts with the manifest's copy; a stored profile that is not valid is one line naming the
    manifest."""
    import shutil

    from mobilevlm_export.manifest import MANIFEST, write_manifest
    from mobilevlm_export.profiles import DeviceProfile, load_profile, parse_profile

    custom = parse_profile({"device": {"name": "my-lab-box", "target": "onnx", "precisions": ["fp32"],
                                       "memory_gb": 16, "bandwidth_gbps": 50, "int8_gops": 500,
                                       "max_context": 2048, "bandwidth_efficiency": 0.5, "compute_efficiency": 0.5,
                                       "threads": 4}}, "custom.toml")
    assert DeviceProfile.from_dict(custom.to_dict()) == custom
    orin = load_profile("orin-agx-64gb")  # a profile with its target's own table
    assert DeviceProfile.from_dict(orin.to_dict()).to_dict() == {**orin.to_dict(), "source": "manifest.json (profile)"}

    d = shutil.copytree(built, tmp_path / "d")
    manifest = json.loads((d / MANIFEST).read_text())
    keep = {k: v for k, v in manifest.items() if k not in ("artifacts", "format_version")}
    write_manifest(d, {**keep, "profile": custom.to_dict()})
    res = _bench(d, *TINY, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["predicted"]["device"] == "my-lab-box"
    for flag in ("--predict", "--profile"):  # a named profile replaces the build's, under either flag
        res = _bench(d, *TINY, flag, "snapdragon-888", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["predicted"]["device"] == "snapdragon-888"
    write_manifest(d, {**keep, "profile": {**custom.to_dict(), "memory_gb": -1}})
    _one_line_error(_bench(d, *TINY), f"{d / MANIFEST} (profile)", "memory_gb")

def test_decode_is_warmed_and_every_run_is_timed(built, monkeypatch):
    """Warm-up and timed runs are the same whole request: one_run is called warmup + runs times."""
    calls = []
    real = bench.one_run
    monkeypatch.setattr(bench, "one_run", lambda pipe, w: calls.append(w.decode_tokens) or real(pipe, w))
    res = _bench(built, "--runs", "3", "--warmup", "2", "--prompt-tokens", "4", "--decode-tokens", "2", "--json")
    assert res.exit_code == 0, res.output
    assert calls == [2] * 5


def test_noisy_runs_are_noted(built, monkeypatch):
    """Forced spread (synthetic timings 1, 1, 1, 2): a note per metric in the JSON, and in the human table."""
    scale = itertools.cycle([1.0, 1.0, 1.0, 2.0])
    monkeypatch.setattr(bench, "one_run", lambda pipe, w: dict.fromkeys(bench.METRICS, next(scale)))
    res = _bench(built, "--runs", "4", "--warmup", "0", "--prompt-tokens", "4", "--decode-tokens", "2", "--json")
    assert res.exit_code == 0, res.output
    host = json.loads(res.stdout)["host"]
    assert [n.split(":")[0] for n in host["notes"]] == list(bench.METRICS)
    assert host["stats"]["vision_ms"]["spread"] == pytest.approx(0.7)

    res = _bench(built, "--runs", "4", "--warmup", "0", "--prompt-tokens", "4", "--decode-tokens", "2")
    assert res.exit_code == 0, res.output
    for label in bench.METRICS.values():
        assert label in res.stdout, label
    assert res.stdout.count("note: ") == len(bench.METRICS)


def test_human_table(built):
    res = _bench(built, *TINY)
    assert res.exit_code == 0, res.output
    for word in ("p50", "p90", "min", "max", "decode tok/s", "time to first token ms", "peak RSS"):
        assert word in res.stdout, word


def test_what_does_not_fit_is_refused_never_clamped(built):
    capacity = open_artifacts(built).generator().decoder.capacity
    positions = 4 + open_artifacts(built).manifest["model"]["dims"]["image_tokens"]
    fits = capacity - positions
    line = _one_line_error(_bench(built, "--prompt-tokens", "4", "--decode-tokens", str(fits + 1), "--json"),
                           "--prompt-tokens 4", f"--decode-tokens {fits + 1}", f"capacity of {capacity}")
    assert "with the image" in line
    line = _one_line_error(_bench(built, "--prompt-tokens", str(capacity), "--decode-tokens", "1", "--text-only"),
                           "--prompt-tokens", "--decode-tokens", "capacity")
    assert "with the image" not in line
    res = _bench(built, "--runs", "1", "--warmup", "0", "--prompt-tokens", "4", "--decode-tokens", str(fits),
                 "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["host"]["decode_tokens"] == fits


@pytest.mark.parametrize("args,flag", [(["--runs", "0"], "--runs"), (["--warmup", "-1"], "--warmup"),
                                       (["--decode-tokens", "0"], "--decode-tokens"),
                                       (["--repeats", "3"], "--repeats")])
def test_bad_run_counts_are_refused(built, args, flag):
    _one_line_error(_bench(built, *args), flag)


def test_measure_refuses_no_runs(built):
    with pytest.raises(UserError, match="--runs 0"):
        bench.measure(open_artifacts(built), runs=0)


def test_build_latency_uses_small_run_counts(built):
    result = bench.bench_artifacts(open_artifacts(built), 1, None, prompt_tokens=4, decode_tokens=2)
    assert set(result) == {"host", "environment"}
    assert (result["host"]["runs"], result["host"]["warmup"]) == (bench.BUILD_RUNS, bench.BUILD_WARMUP)


def test_source_state(tmp_path, monkeypatch):
    commit, dirty = bench.source_state()
    assert (commit is None and dirty is None) or (re.fullmatch(r"[0-9a-f]{40}", commit) and isinstance(dirty, bool))
    assert bench.source_state(tmp_path) == (None, None)  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # git missing
    assert bench.source_state() == (None, None)


def test_cpu_info(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 fma f16c avx512f amx_tile\n\n"
                   "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu\n")
    assert bench.cpu_info(x86) == ("Some Xeon", ["avx2", "avx512f", "amx_tile", "fma", "f16c"])
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd40\n")
    model, flags = bench.cpu_info(arm)
    assert model and flags == ["asimd", "asimddp", "i8mm", "sve"]
    assert bench.cpu_info(tmp_path / "absent")[1] == []
