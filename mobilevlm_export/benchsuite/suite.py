"""One suite run: build (or reuse) every row at one shape and measure its accuracy on the demo (``prepare``),
time in interleaved rounds and summarize (``timing``), write the results JSON and BENCHMARKS.md (``report``).

Decode and prefill come from a text-only request (a ``prompt_tokens``-token prompt, ``decode_tokens`` greedy
steps), as the decoder-only peers are measured; the time to first token from the image + ``prompt_tokens`` request
(vision encoder + prefill of the image tokens and the text).

``results-<shape>.json`` (``SCHEMA``): ``shape`` {name, title, checkpoint, checkpoint_build}; ``environment``
(``bench.environment``: commit, dirty, versions, CPU, ...); ``package`` (``cache.identity``: version, source_sha256,
libraries); ``bandwidth`` (``bench.memory_bandwidth``); ``compute_roof`` (``roof.gemm_roof``); ``settings`` (the
``SuiteConfig``, threads resolved); ``rows``: per row the ``rows.Row`` fields, ``path``, ``build`` (wall_s, peak_rss_mb,
rc, ..., cached, key; None for eager), ``artifact_bytes``, ``decoder_bytes_per_token``, ``costs`` (ours),
``host_limit_decode_tokens_per_s`` (bandwidth / bytes per token), ``bandwidth_fraction``, the metrics
``decode_tokens_per_s``, ``prefill_tokens_per_s`` (text-only request), ``ttft_ms``, ``vision_ms``, ``prefill_ms`` (image
request; None for decoder-only peers), each {p50, spread_runs, spread_rounds, runs, rounds}, ``vision_share``,
``vision_roof`` (``roof.vision_fraction``: the vision encoder's GEMM GOPS and their fraction of ``compute_roof``; None
without a vision time or costs), ``peak_rss_mb`` (of the timing processes), ``accuracy`` {heldout_accuracy,
heldout_correct, heldout_n, kl_max, kl_mean, top1_min, logits_cases, note, cached, wall_s, provenance} or None,
``schemes`` (ours: part -> "8da4w g64", ...; None for the peers); ``versus_export_llm``: "g32"/"g128" (equal group
sizes) and "defaults" (``rows.DEFAULTS``) -> {group_size, export_llm_group_size, ours, export_llm, interleaved {prefill,
decode: {median_ratio, rounds_ours_at_least_as_fast, rounds, ratios}}, ab (``ab.paired_ab``) or None, profile_ops
(``opprofile.profile_ops``) or None, accuracy (``pair_accuracy``)}; ``rounds``: [{round, order, rows: name -> the
worker's ``time_row``}]; ``frontier`` (``frontier.frontier``); ``predictions`` {rows: ``predict.predictions``,
calibration: ``predict.calibration_fit``}; ``notes``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.backends.executorch import RUNTIME_PROCESS_ENV
from mobilevlm_export.benchsuite import cache
from mobilevlm_export.benchsuite.prepare import checkpoint, measure_accuracy, prepare, resolve_commit, source_at
from mobilevlm_export.benchsuite.roof import vision_fraction
from mobilevlm_export.benchsuite.rows import (
    BEFORE,
    BY_NAME,
    DEFAULTS,
    SCHEMA,
    STAND_INS,
    Row,
    before_row,
    recipe_at,
    schemes,
    select,
)
from mobilevlm_export.benchsuite.timing import before_after, interleaved_rounds, ratios, summarize_row, worker
from mobilevlm_export.cores import usable_cores
from mobilevlm_export.errors import UserError

SHAPE_TITLES = {"demo": "the bundled demo checkpoint (trained, tiny)", "tiny": "tiny dims, random weights",
                "1.7b": "MobileVLM_V2-1.7B dims, random weights"}


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
    roof_repeats: int = 20  # timed calls of the int8 GEMM roof (roof.gemm_roof)
    plot: bool = True
    build_only: bool = False  # build (and measure accuracy), time nothing: builds can run beside other work
    before: str | None = None  # a git commit: its default program beside today's (``rows.before_row``)
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.shape not in cache.SHAPES:
            raise UserError(f"--shape {self.shape}: unknown (known: {', '.join(cache.SHAPES)})")
        for flag, value, low in (("--rounds", self.rounds, 1), ("--runs", self.runs, 1), ("--warmup", self.warmup, 0),
                                 ("--prompt-tokens", self.prompt_tokens, 1),
                                 ("--decode-tokens", self.decode_tokens, 1), ("--ab-pairs", self.ab_pairs, 1),
                                 ("--accuracy-samples", self.accuracy_samples, 0),
                                 ("--bandwidth-mb", self.bandwidth_mb, 1), ("--roof-repeats", self.roof_repeats, 1)):
            if value < low:
                raise UserError(f"{flag} {value}: must be at least {low}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")


def default_threads() -> int:
    """The runtime threads when ``--threads`` is not given: the usable cores, at most 4."""
    return min(4, usable_cores())


def pair_accuracy(ours: Row, peer: Row, accuracy: dict) -> dict:
    """The accuracies beside an ours / export_llm ratio: ours, measured on the demo; export_llm's own program
    cannot be (it is exported from random weights by ExecuTorch's model class, and takes tokens, not the image
    embeddings the demo's questions need), so its scheme built by our pipeline stands in (``rows.STAND_INS``),
    named as such."""
    stand_in = STAND_INS.get(peer.name)
    return {"ours": accuracy.get(ours.name), "export_llm": None,
            "export_llm_scheme_built_by_us": stand_in.name if stand_in else None,
            "export_llm_scheme_accuracy": accuracy.get(stand_in.name) if stand_in else None}


def with_before(rows: list[Row], commit: str, out: Path, log) -> list[Row]:
    """``rows`` with the default program of ``commit`` (``rows.before_row``) just before today's, which is added
    where ``--only`` left it out (the comparison needs both)."""
    from mobilevlm_export.schema import tomllib

    after = BY_NAME[DEFAULTS[0]]
    recipe = recipe_at(source_at(commit, out, log), after.recipe)
    group = (tomllib.loads(recipe.read_text()).get("quantize", {}).get("decoder", {}).get("group_size")
             if recipe.is_file() else None)
    if after not in rows:
        rows = [r for r in select(None) if r in rows or r is after]
    i = rows.index(after)
    return [*rows[:i], before_row(commit, group), *rows[i:]]


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
    if cfg.before:
        rows = with_before(rows, resolve_commit(cfg.before), out, log)
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
    log(f"measuring the host's int8 GEMM roof (XNNPACK 8da8w, threads: {threads}) ...")
    roof = worker({"task": "gemm_roof", "threads": threads, "repeats": cfg.roof_repeats})
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
                      "bandwidth_fraction": round(decode / limit, 3), **summary,
                      "vision_roof": vision_fraction((prep["costs"] or {}).get("vision_ops"),
                                                     (summary["vision_ms"] or {}).get("p50"), roof),
                      "accuracy": accuracy[r.name], "delegation": prep.get("delegation"),
                      "schemes": schemes(r, out, prep.get("source"))})
    before = next((r for r in rows if r.kind == BEFORE), None)
    results = {
        "schema": SCHEMA, "shape": {"name": cfg.shape, "title": SHAPE_TITLES[cfg.shape], "checkpoint": str(ckpt),
                                    "checkpoint_build": ckpt_info},
        "environment": env, "package": cache.identity(), "bandwidth": bandwidth, "compute_roof": roof,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "notes"}
        | {"threads": threads, "executorch_process_env": RUNTIME_PROCESS_ENV},
        "rows": table, "versus_export_llm": versus, "rounds": rounds, "frontier": frontier(table),
        "before_after": before and {"before": before.name, "after": DEFAULTS[0], "commit": before.commit,
                                    "ratios": before_after(before.name, DEFAULTS[0], rounds)},
        "predictions": {"rows": predictions(table), "calibration": calibration_fit()},
        "notes": list(cfg.notes),
    }
    path = out / f"results-{cfg.shape}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report = write_report(out, plot=cfg.plot)
    log(f"wrote {path} and {report}")
    return results
