"""One suite run: build (or reuse) every row at one shape, measure accuracy on the demo, time in interleaved
rounds, summarize, write the results JSON and BENCHMARKS.md.

Timing: each row in a fresh process per round (``worker``), the rows' order reversed every other round (the
host's speed drifts by more than the differences measured, so a row is never always first or last); within a
process ``bench.measure`` takes ``warmup`` untimed then ``runs`` timed requests. A row's figure is the median of
all its timed runs over all rounds (``rounds`` x ``runs``). Decode and prefill come from a text-only request (a
``prompt_tokens``-token prompt, ``decode_tokens`` greedy steps), as the decoder-only peers are measured; the time
to first token from the image + ``prompt_tokens`` request (vision encoder + prefill of the image tokens and the
text).

``results-<shape>.json`` (``SCHEMA``): ``shape`` {name, title, checkpoint, checkpoint_build}; ``environment``
(``bench.environment``: commit, dirty, versions, CPU, ...); ``package`` (``cache.identity``: version,
source_sha256, libraries); ``bandwidth``
(``bench.memory_bandwidth``); ``settings`` (the ``SuiteConfig``, threads resolved); ``rows``: per row the
``rows.Row`` fields, ``path``, ``build`` (wall_s, peak_rss_mb, rc, ..., cached, key; None for eager),
``artifact_bytes``, ``decoder_bytes_per_token``, ``costs`` (ours), ``host_limit_decode_tokens_per_s`` (bandwidth /
bytes per token), ``bandwidth_fraction``, the metrics ``decode_tokens_per_s``, ``prefill_tokens_per_s`` (text-only
request), ``ttft_ms``, ``vision_ms``, ``prefill_ms`` (image request; None for decoder-only peers), each {p50,
spread_runs, spread_rounds, runs, rounds}, ``vision_share``, ``peak_rss_mb`` (of the timing processes), ``accuracy``
{heldout_accuracy, heldout_correct, heldout_n, kl_max, kl_mean, top1_min, logits_cases, note, cached, wall_s,
provenance} or None, ``schemes`` (ours: part -> "8da4w g64", ...; None for the peers); ``versus_export_llm``:
"g32"/"g128" (equal group sizes) and "defaults" (``rows.DEFAULTS``) -> {group_size, export_llm_group_size, ours,
export_llm, interleaved {prefill, decode: {median_ratio, rounds_ours_at_least_as_fast, rounds, ratios}}, ab
(``ab.paired_ab``) or None, profile_ops (``opprofile.profile_ops``) or None, accuracy (``pair_accuracy``)};
``rounds``: [{round, order, rows: name -> the worker's ``time_row``}]; ``frontier`` (``frontier.frontier``);
``predictions`` {rows: ``predict.predictions``, calibration: ``predict.calibration_fit``}; ``notes``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.backends.executorch import RUNTIME_PROCESS_ENV
from mobilevlm_export.benchsuite import cache
from mobilevlm_export.benchsuite.rows import (
    BY_NAME,
    DEFAULTS,
    EAGER,
    EXPORT_LLM,
    ORT_INT4,
    OURS,
    SCHEMA,
    STAND_INS,
    Row,
    recipe_text,
    schemes,
    select,
    timing_order,
)
from mobilevlm_export.cores import usable_cores
from mobilevlm_export.errors import UserError

SHAPE_TITLES = {"demo": "the bundled demo checkpoint (trained, tiny)", "tiny": "tiny dims, random weights",
                "1.7b": "MobileVLM_V2-1.7B dims, random weights"}
TEXT_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s")
IMAGE_METRICS = ("ttft_ms", "vision_ms", "prefill_ms")


@dataclass
class SuiteConfig:
    shape: str = "1.7b"
    only: list[str] | None = None
    rounds: int = 4  # even: each row is timed first as often as last (the order reverses every other round)
    runs: int = 3  # per round: 12 timed requests per row (and 1 warm-up per round) by default
    warmup: int = 1
    threads: int | None = None  # None: min(4, the usable cores)
    out: Path = Path("build/bench")
    prompt_tokens: int = 64
    decode_tokens: int = 64
    ttft_decode_tokens: int = 4  # decode steps of the image request (only its time to first token is kept)
    ab: bool = False
    ab_pairs: int = 20
    ab_burst: int = 8
    profile_ops: bool = False
    profile_rounds: int = 6
    accuracy_samples: int = 150
    bandwidth_mb: int = 512
    bandwidth_repeats: int = 5
    plot: bool = True
    build_only: bool = False  # build (and measure accuracy), time nothing: builds can run beside other work
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.shape not in cache.SHAPES:
            raise UserError(f"--shape {self.shape}: unknown (known: {', '.join(cache.SHAPES)})")
        for flag, value, low in (("--rounds", self.rounds, 1), ("--runs", self.runs, 1), ("--warmup", self.warmup, 0),
                                 ("--prompt-tokens", self.prompt_tokens, 1),
                                 ("--decode-tokens", self.decode_tokens, 1), ("--ab-pairs", self.ab_pairs, 1),
                                 ("--accuracy-samples", self.accuracy_samples, 0),
                                 ("--bandwidth-mb", self.bandwidth_mb, 1)):
            if value < low:
                raise UserError(f"{flag} {value}: must be at least {low}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")


def default_threads() -> int:
    """The runtime threads when ``--threads`` is not given: the usable cores, at most 4."""
    return min(4, usable_cores())


def worker(task: dict, timeout: float | None = None) -> dict:
    """Run one ``worker`` task in a fresh process (``backends.executorch.RUNTIME_PROCESS_ENV`` added to the
    environment of one that runs ExecuTorch programs, ours and export_llm's alike); its result. ``RuntimeError`` with
    the stderr tail when it fails."""
    from mobilevlm_export.benchsuite.worker import uses_executorch

    env = {**os.environ, **RUNTIME_PROCESS_ENV} if uses_executorch(task) else None
    with tempfile.TemporaryDirectory(prefix="mvlm-bench-") as tmp:
        spec, result = Path(tmp) / "task.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({**task, "result": str(result)}, default=str))
        res = subprocess.run([sys.executable, "-m", "mobilevlm_export.benchsuite.worker", str(spec)],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if res.returncode != 0 or not result.is_file():
            raise RuntimeError(f"suite task {task['task']} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        return json.loads(result.read_text())


# --- building ---------------------------------------------------------------------------------------------------

def checkpoint(shape: str, out: Path, log) -> tuple[Path, dict]:
    """The checkpoint of ``shape``: the bundled demo, or a synthetic one written once into the cache."""
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    if shape == "demo":
        return demo_checkpoint_dir(), {"cached": True, "bundled": True}
    record = cache.shape_record(shape)

    def make(d: Path) -> dict:
        return worker({"task": "checkpoint", "out": str(d / "ckpt"), "shape": shape})

    entry, info = cache.entry(out / "checkpoints", shape, record, make, log)
    return entry / "ckpt", info


def artifact_bytes(root: Path, manifest: dict) -> int:
    """Bytes of the files the host's runtime loads: each graph record's file (once) and its external data."""
    files = {g["file"] for g in manifest["graphs"].values()}
    total = 0
    for rel in files:
        for p in (root / rel, root / (rel + ".data")):
            if p.is_file():
                total += p.stat().st_size
    return total


def _build_ours(row: Row, ckpt: Path, shape: str, out: Path, threads: int, log) -> tuple[Path, dict]:
    from mobilevlm_export.benchsuite.peers import run_measured
    from mobilevlm_export.schema import tomllib

    text, path = recipe_text(row, out)
    # keyed by the recipe's values, not its text: a comment (the justification of a default, say) changes no build
    record = {"kind": OURS, "target": row.target, "recipe": tomllib.loads(text),
              "checkpoint": cache.shape_record(shape), "package": cache.identity()}

    def make(d: Path) -> dict:
        cmd = [sys.executable, "-m", "mobilevlm_export.cli", "build", str(ckpt), "--target", row.target, "--recipe",
               str(path), "-o", str(d / "artifacts"), "--no-bench", "--threads", str(min(threads, usable_cores())),
               "--json"]
        rc, wall, rss = run_measured(cmd, d, d / "build.log")
        # 1: a check failed. Parity below the recipe's bounds (random weights at full size) still leaves a build
        # to time; a failed compile check (lint, an operator fallback) leaves nothing and must not be cached
        manifest = d / "artifacts" / "manifest.json"
        built = manifest.is_file() and bool(json.loads(manifest.read_text()).get("verification"))
        if rc not in (0, 1) or not built:
            tail = (d / "build.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"build {row.recipe} failed (exit {rc}{'' if built else ', nothing built'}):\n{tail}")
        return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1), "rc": rc, "parity_passed": rc == 0,
                "command": " ".join(cmd[1:])}

    entry, info = cache.entry(out / "builds" / shape, row.recipe, record, make, log)
    return entry / "artifacts", info


def _build_export_llm(row: Row, ckpt: Path, shape: str, out: Path, log) -> tuple[Path, dict]:
    from importlib.metadata import version

    from mobilevlm_export.benchsuite.peers import EXPORT_LLM_MAX_SEQ, LlamaShape, export_llm, export_llm_command

    llama = LlamaShape.from_config(json.loads((ckpt / "config.json").read_text()))
    max_seq = min(EXPORT_LLM_MAX_SEQ, llama.context)
    record = {"kind": EXPORT_LLM, "shape": asdict(llama), "group_size": row.group_size, "max_seq_len": max_seq,
              "executorch": version("executorch"), "torchao": version("torchao"),
              # (the command without the interpreter and the paths, which depend on where the suite runs)
              "command": [a for a in export_llm_command(Path("P"), Path("O"), "N", row.group_size, max_seq)[1:]
                          if not a.startswith(("base.params=", "export.output_dir="))],
              "builder": cache.suite_digest("peers")}

    def make(d: Path) -> dict:
        return export_llm(d, llama, row.group_size, max_seq)

    entry, info = cache.entry(out / "builds" / shape, row.name, record, make, log)
    return entry / info["pte"], info


def _build_ort_int4(fp32: Path, fp32_info: dict, shape: str, out: Path, log) -> tuple[Path, dict]:
    from importlib.metadata import version

    from mobilevlm_export.benchsuite.peers import ORT_INT4

    record = {"kind": ORT_INT4, "config": ORT_INT4, "onnxruntime": version("onnxruntime"),
              "fp32_build": fp32_info["key"], "package": cache.identity(), "builder": cache.suite_digest("peers")}

    def make(d: Path) -> dict:
        return worker({"task": "ort_int4", "fp32_dir": str(fp32), "out": str(d / "artifacts")})

    entry, info = cache.entry(out / "builds" / shape, "ort-int4-b32", record, make, log)
    return entry / "artifacts", info


def prepare(row: Row, ckpt: Path, shape: str, out: Path, threads: int, log, done: dict) -> dict:
    """Build (or find in the cache) ``row``'s program on ``ckpt`` (of ``shape``): ``{"path", "build",
    "artifact_bytes", "decoder_bytes_per_token", "costs", "target"}``. ``done``: rows prepared so far."""
    key = (row.name, shape)
    if key in done:
        return done[key]
    config = json.loads((ckpt / "config.json").read_text())
    if row.kind == EAGER:
        from mobilevlm_export.benchsuite.predict import decoder_linear_weights

        weights = decoder_linear_weights(config["hidden_size"], config["intermediate_size"],
                                         config["num_hidden_layers"], config["num_attention_heads"],
                                         config.get("num_key_value_heads") or config["num_attention_heads"],
                                         config["vocab_size"])
        prep = {"path": str(ckpt), "build": None, "artifact_bytes": None, "decoder_bytes_per_token": 4.0 * weights,
                "costs": None, "target": None}
    elif row.kind == OURS:
        path, info = _build_ours(row, ckpt, shape, out, threads, log)
        manifest = json.loads((path / "manifest.json").read_text())
        prep = {"path": str(path), "build": info, "artifact_bytes": artifact_bytes(path, manifest),
                "decoder_bytes_per_token": manifest["costs"]["decoder_bytes_per_token"], "costs": manifest["costs"],
                "target": row.target}
    elif row.kind == EXPORT_LLM:
        path, info = _build_export_llm(row, ckpt, shape, out, log)
        embedding = config["vocab_size"] * config["hidden_size"] * 4  # fp32, read one row per token
        prep = {"path": str(path), "build": info, "artifact_bytes": info["bytes"],
                "decoder_bytes_per_token": info["bytes"] - embedding, "costs": None, "target": None}
    elif row.kind == ORT_INT4:
        fp32 = prepare(BY_NAME["onnx-fp32"], ckpt, shape, out, threads, log, done)
        path, info = _build_ort_int4(Path(fp32["path"]), fp32["build"], shape, out, log)
        manifest = json.loads((path / "manifest.json").read_text())
        prep = {"path": str(path), "build": info, "artifact_bytes": artifact_bytes(path, manifest),
                "decoder_bytes_per_token": info["decoder_bytes"], "costs": None, "target": None}
    else:
        raise ValueError(row.kind)
    done[key] = prep
    return prep


# --- accuracy ---------------------------------------------------------------------------------------------------

def measure_accuracy(row: Row, demo: Path, out: Path, threads: int, samples: int, log, done: dict) -> dict | None:
    """Held-out accuracy and logits KL / top-1 vs fp32 of ``row``'s recipe built on the trained demo checkpoint
    (cached). None for export_llm (its programs are exported from random weights by its own model class)."""
    if row.kind == EXPORT_LLM or samples == 0:
        return None
    prep = prepare(row, demo, "demo", out, threads, log, done)
    record = {"kind": "accuracy", "row": row.name, "of": (prep["build"] or {}).get("key") or
              cache.shape_record("demo"), "samples": samples, "package": cache.identity(),
              "measurer": cache.suite_digest("worker")}

    def make(d: Path) -> dict:
        return worker({"task": "accuracy", "kind": row.kind, "path": prep["path"], "samples": samples,
                       "threads": threads, "reverify": row.kind == ORT_INT4})

    _, info = cache.entry(out / "accuracy", row.name, record, make, log, "measuring the accuracy of")
    return {k: v for k, v in info.items() if k != "key"}


# --- timing -----------------------------------------------------------------------------------------------------

def timing_task(row: Row, prep: dict, cfg: SuiteConfig, threads: int, dims: dict) -> dict:
    return {"task": "time", "kind": row.kind, "path": prep["path"], "threads": threads,
            "prompt_tokens": cfg.prompt_tokens, "decode_tokens": cfg.decode_tokens, "runs": cfg.runs,
            "warmup": cfg.warmup, "ttft": not row.decoder_only, "ttft_decode_tokens": cfg.ttft_decode_tokens,
            "dims": dims}


def interleaved_rounds(rows: list[Row], prepared: dict, cfg: SuiteConfig, threads: int, dims: dict, log) -> list:
    """``cfg.rounds`` rounds, each row in a fresh process, in ``rows.timing_order`` (ours / export_llm pairs back
    to back), the order reversed every other round (so with an even number of rounds every row, and each side of a
    pair, is timed first as often as last)."""
    rounds, base = [], timing_order(rows)
    for i in range(cfg.rounds):
        order = base if i % 2 == 0 else base[::-1]
        result = {}
        for row in order:
            result[row.name] = worker(timing_task(row, prepared[row.name], cfg, threads, dims))
            text = result[row.name]["text"]
            log(f"round {i + 1}/{cfg.rounds} {row.name}: decode {text['decode_tokens_per_s']:.4g} tok/s, prefill "
                f"{text['prefill_tokens_per_s']:.4g} tok/s")
        rounds.append({"round": i, "order": [r.name for r in order], "rows": result})
    return rounds


def metric(values: list[float], run_spreads: list[float], pooled: list[float] | None = None) -> dict:
    """A row's figure over rounds: the median of every timed run of every round (``pooled``; without it, of the
    rounds' p50s), the spread of the rounds' p50s ((p90 - p10) / p50, None for one round), the median within-round
    spread, how many runs the median is over, and each round's p50."""
    from mobilevlm_export.bench import stats

    return {"p50": float(f"{statistics.median(pooled or values):.4g}"),
            "spread_rounds": stats(values)["spread"] if len(values) > 1 else None,
            "spread_runs": float(f"{statistics.median(run_spreads):.4g}"),
            "runs": len(pooled) if pooled else len(values), "rounds": values}


def summarize_row(name: str, rounds: list[dict]) -> dict:
    out = {}
    for part, names in (("text", TEXT_METRICS), ("image", IMAGE_METRICS)):
        records = [r["rows"][name][part] for r in rounds if r["rows"][name].get(part)]
        for m in names:
            pooled = ([x for rec in records for x in rec["samples"][m]]
                      if records and all("samples" in rec for rec in records) else None)
            out[m] = metric([rec["stats"][m]["p50"] for rec in records],
                            [rec["stats"][m]["spread"] for rec in records], pooled) if records else None
    out["vision_share"] = (round(out["vision_ms"]["p50"] / out["ttft_ms"]["p50"], 3)
                           if out["ttft_ms"] and out["ttft_ms"]["p50"] else None)
    out["peak_rss_mb"] = max(r["rows"][name]["peak_rss_mb"] for r in rounds)
    return out


def ratios(ours: str, peer: str, rounds: list[dict]) -> dict:
    """Per round, ours / peer tokens/s (text-only prefill and decode): the median ratio, in how many rounds ours
    was at least as fast, each round's ratio."""
    out = {}
    for kind, m in (("prefill", "prefill_tokens_per_s"), ("decode", "decode_tokens_per_s")):
        rs = [r["rows"][ours]["text"]["stats"][m]["p50"] / r["rows"][peer]["text"]["stats"][m]["p50"] for r in rounds]
        out[kind] = {"median_ratio": round(statistics.median(rs), 3), "rounds_ours_at_least_as_fast":
                     sum(x >= 1 for x in rs), "rounds": len(rs), "ratios": [round(x, 3) for x in rs]}
    return out


# --- the run ----------------------------------------------------------------------------------------------------

def pair_accuracy(ours: Row, peer: Row, accuracy: dict) -> dict:
    """The accuracies beside an ours / export_llm ratio: ours, measured on the demo; export_llm's own program
    cannot be (it is exported from random weights by ExecuTorch's model class, and takes tokens, not the image
    embeddings the demo's questions need), so its scheme built by our pipeline stands in (``rows.STAND_INS``),
    named as such."""
    stand_in = STAND_INS.get(peer.name)
    return {"ours": accuracy.get(ours.name), "export_llm": None,
            "export_llm_scheme_built_by_us": stand_in.name if stand_in else None,
            "export_llm_scheme_accuracy": accuracy.get(stand_in.name) if stand_in else None}


def run_suite(cfg: SuiteConfig, log=print) -> dict:
    """Run the suite as ``cfg`` says; the results (also written to ``cfg.out/results-<shape>.json``, with
    ``BENCHMARKS.md`` from every results file in ``cfg.out``). ``cfg.build_only``: build what is missing and stop
    (so single-threaded builds can run side by side, ``--only`` splitting the rows, and the timings then run
    alone)."""
    from mobilevlm_export.bench import environment, memory_bandwidth
    from mobilevlm_export.benchsuite.frontier import frontier
    from mobilevlm_export.benchsuite.predict import calibration_fit, predictions
    from mobilevlm_export.benchsuite.report import write_report
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    cfg.check()
    rows = select(cfg.only)
    threads = cfg.threads or default_threads()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, ckpt_info = checkpoint(cfg.shape, out, log)
    demo = demo_checkpoint_dir()
    done: dict = {}
    prepared = {r.name: prepare(r, ckpt, cfg.shape, out, threads, log, done) for r in rows}
    accuracy = {r.name: measure_accuracy(r, demo, out, threads, cfg.accuracy_samples, log, done)
                for r in [*rows, *(STAND_INS[r.name] for r in rows if r.name in STAND_INS)]}
    if cfg.build_only:
        log(f"built: {', '.join(r.name for r in rows)} (--build-only: nothing timed, no results written)")
        return {"built": {name: {"path": p["path"], "build": p["build"]} for name, p in prepared.items()},
                "accuracy": accuracy}
    env = environment(threads)  # (builds may take hours: the environment and bandwidth of the timings)
    log(f"measuring the host's memory bandwidth ({cfg.bandwidth_mb} MB copy, threads: {threads}) ...")
    bandwidth = memory_bandwidth(cfg.bandwidth_mb, cfg.bandwidth_repeats, threads)
    config = json.loads((ckpt / "config.json").read_text())
    dims = {"vocab": config["vocab_size"], "image_tokens": 0, "image_size": 1}  # text-only peers' workload
    rounds = interleaved_rounds(rows, prepared, cfg, threads, dims, log)
    names = {r.name for r in rows}
    pairs = [(f"g{r.group_size}", r, BY_NAME[r.versus]) for r in rows if r.versus in names]
    if set(DEFAULTS) <= names:  # each tool's default, at different group sizes (and so different accuracies)
        pairs.append(("defaults", BY_NAME[DEFAULTS[0]], BY_NAME[DEFAULTS[1]]))
    versus = {}
    for key, ours, peer in pairs:
        entry = {"group_size": ours.group_size, "export_llm_group_size": peer.group_size, "ours": ours.name,
                 "export_llm": peer.name, "interleaved": ratios(ours.name, peer.name, rounds), "ab": None,
                 "profile_ops": None, "accuracy": pair_accuracy(ours, peer, accuracy)}
        if cfg.ab:
            log(f"paired A/B {ours.name} vs {peer.name} ({cfg.ab_pairs} pairs) ...")
            entry["ab"] = worker({"task": "ab", "ours": prepared[ours.name]["path"],
                                  "peer": prepared[peer.name]["path"], "threads": threads, "pairs": cfg.ab_pairs,
                                  "prompt_tokens": cfg.prompt_tokens, "burst": cfg.ab_burst})
        if cfg.profile_ops and key != "defaults":  # (an operator profile compares equal schemes)
            log(f"per-operator profile {ours.name} vs {peer.name} ...")
            entry["profile_ops"] = worker({"task": "profile_ops", "ours": prepared[ours.name]["path"],
                                           "peer": prepared[peer.name]["path"], "threads": threads,
                                           "prompt_tokens": cfg.prompt_tokens, "rounds": cfg.profile_rounds})
        versus[key] = entry
    if cfg.profile_ops and not pairs:
        cfg.notes.append("--profile-ops: no ours/export_llm pair selected (et-8da4w-g32 + export_llm-g32, or g128)")
    if cfg.ab and not pairs:
        cfg.notes.append("--ab: no ours/export_llm pair selected (et-8da4w-g32 + export_llm-g32, or g128)")

    table = []
    for r in rows:
        prep, summary = prepared[r.name], summarize_row(r.name, rounds)
        decode = summary["decode_tokens_per_s"]["p50"]
        limit = bandwidth["gbps"] * 1e9 / prep["decoder_bytes_per_token"]
        table.append({**r.to_dict(), "path": prep["path"], "build": prep["build"],
                      "artifact_bytes": prep["artifact_bytes"],
                      "decoder_bytes_per_token": prep["decoder_bytes_per_token"], "costs": prep["costs"],
                      "host_limit_decode_tokens_per_s": float(f"{limit:.4g}"),
                      "bandwidth_fraction": round(decode / limit, 3), **summary, "accuracy": accuracy[r.name],
                      "schemes": schemes(r, out)})
    results = {
        "schema": SCHEMA, "shape": {"name": cfg.shape, "title": SHAPE_TITLES[cfg.shape], "checkpoint": str(ckpt),
                                    "checkpoint_build": ckpt_info},
        "environment": env, "package": cache.identity(), "bandwidth": bandwidth,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "notes"}
        | {"threads": threads, "executorch_process_env": RUNTIME_PROCESS_ENV},
        "rows": table, "versus_export_llm": versus, "rounds": rounds, "frontier": frontier(table),
        "predictions": {"rows": predictions(table), "calibration": calibration_fit()},
        "notes": list(cfg.notes),
    }
    path = out / f"results-{cfg.shape}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report = write_report(out, plot=cfg.plot)
    log(f"wrote {path} and {report}")
    return results
