"""BENCHMARKS.md and its plots, written from the suite's results files (``results-<shape>.json`` in ``--out``):
the latest run of each shape, one section per shape, then the device profiles' calibration fit."""

from __future__ import annotations

import json
from pathlib import Path

from mobilevlm_export.benchsuite.cache import SHAPES
from mobilevlm_export.benchsuite.frontier import plot_frontier, pyplot
from mobilevlm_export.benchsuite.predict import METRIC_LABELS
from mobilevlm_export.benchsuite.rows import BY_NAME, DEFAULTS, SCHEMA

REPORT = "BENCHMARKS.md"
PLOTS = Path("benchmarks") / "plots"  # relative to the report, so the report and its plots move together
SHOWN_VERSIONS = ("torch", "executorch", "torchao", "onnxruntime", "onnx", "transformers", "numpy", "python")


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, int) or (isinstance(x, float) and abs(x) >= 10 ** digits):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _metric(m: dict | None, digits: int = 4) -> str:
    return "–" if not m else _num(m["p50"], digits)


def _spread(m: dict | None) -> str:
    if not m:
        return "–"
    rounds = "–" if m["spread_rounds"] is None else _pct(m["spread_rounds"])
    return f"{_pct(m['spread_runs'])} / {rounds}"


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _label(row: dict) -> str:
    return f"{row['backend']} · {row['recipe']}"


def load_results(out: Path) -> list[dict]:
    """Every results file in ``out`` of this suite's schema (files of an older schema, from an earlier version of
    the suite, are left out), largest shape first."""
    found = {}
    for p in Path(out).glob("results-*.json"):
        data = json.loads(p.read_text())
        if data.get("schema") == SCHEMA:
            found[data["shape"]["name"]] = data
    return [found[s] for s in reversed(SHAPES) if s in found]


def plot_results(results: dict, path: Path) -> str | None:
    """Decode tok/s and time to first token (vision + prefill) per backend x recipe; None when matplotlib is
    missing (the report then says so)."""
    plt = pyplot()
    if plt is None:
        return None
    rows = results["rows"]
    labels = [_label(r) for r in rows]
    decode = [r["decode_tokens_per_s"]["p50"] if r["decode_tokens_per_s"] else 0 for r in rows]
    vision = [r["vision_ms"]["p50"] if r["vision_ms"] else 0 for r in rows]
    ttft = [r["ttft_ms"]["p50"] if r["ttft_ms"] else 0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.55 * len(rows) + 1.8), sharey=True)
    y = range(len(rows))
    ax1.barh(y, decode, color="#4c72b0")
    for i, r in enumerate(rows):
        ax1.text(decode[i], i, f" {decode[i]:.3g} ({_pct(r['bandwidth_fraction'])} of limit)", va="center",
                 fontsize=8)
    ax1.set_yticks(list(y), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("decode tokens/s (text-only prompt), higher is better")
    ax1.margins(x=0.35)
    ax2.barh(y, vision, color="#dd8452", label="vision encoder")
    ax2.barh(y, [t - v for t, v in zip(ttft, vision, strict=True)], left=vision, color="#55a868",
             label="prefill (image tokens + prompt)")
    for i, r in enumerate(rows):
        ax2.text(ttft[i], i, " decoder only" if r["decoder_only"] else f" {ttft[i]:,.0f} ms", va="center", fontsize=8)
    ax2.set_xlabel("time to first token, ms (image + prompt), lower is better")
    ax2.legend(fontsize=8, loc="lower right")
    ax2.margins(x=0.25)
    fig.suptitle(f"{results['shape']['title']}: {results['environment']['cpu_model']}, "
                 f"{_threads(results['settings']['threads'])}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _machine(r: dict) -> list[str]:
    env, bw, pkg, s = r["environment"], r["bandwidth"], r["package"], r["settings"]
    versions = ", ".join(f"{k} {env['versions'][k]}" for k in SHOWN_VERSIONS if k in env["versions"])
    commit = (env["commit"] or "not a git checkout")[:12] + (" (uncommitted changes)" if env["dirty"] else "")
    return [
        f"- Run: {env['date']}, commit {commit}, mobilevlm_export {pkg['version']} (source sha256 "
        f"{pkg['source_sha256'][:12]}).",
        f"- Machine: {env['cpu_model']} ({env['machine']}), {env['logical_cores']} logical cores, ISA: "
        f"{', '.join(env['cpu_flags']) or 'none of interest'}; {env['os']}.",
        f"- Memory bandwidth, measured: **{bw['gbps']:g} GB/s** ({bw['method']}; {bw['array_mb']} MB, "
        f"{bw['repeats']} repeats, {_threads(bw['threads'])})." + _roof(r.get("compute_roof")),
        f"- Versions: {versions}.",
        f"- Settings: {_threads(s['threads'])}; interleaved rounds: {s['rounds']}, each of {s['warmup']} warm-up + "
        f"{s['runs']} timed requests per row; text-only prompt {s['prompt_tokens']} tokens + "
        f"{s['decode_tokens']} decode steps; time to first token: image + {s['prompt_tokens']}-token prompt; accuracy: "
        f"{s['accuracy_samples']} held-out demo pairs." + _process_env(s.get("executorch_process_env")),
        "- Rows: " + ("all of the suite's." if not s.get("only") else
                      f"{len(s['only'])} selected with `--only {','.join(s['only'])}`; the suite's other rows "
                      f"({', '.join(f'`{n}`' for n in BY_NAME if n not in s['only'])}) were not run."),
    ]


def _roof(roof: dict | None) -> str:
    if not roof:
        return ""
    shape = roof["shape"]
    return (f" int8 GEMM roof, measured: **{roof['gops']:g} GOPS** (median {roof['gops_median']:g}; one "
            f"[{shape['m']}, {shape['k']}] x [{shape['k']}, {shape['n']}] {roof['scheme']} linear in XNNPACK, best of "
            f"{roof['repeats']} calls, {_threads(roof['threads'])}).")


def _vision_gops(row: dict) -> str:
    v = row.get("vision_roof")
    return f"{_num(v['gops'])} ({_pct(v['fraction'])})" if v else "–"


def _process_env(env: dict | None) -> str:
    if not env:
        return ""
    return (" Processes that run ExecuTorch programs (ours and export_llm's) have "
            f"{', '.join(f'`{k}={v}`' for k, v in env.items())}: in a Python host the LLM custom ops' fp32 products "
            "run on PyTorch's MKL, whose OpenMP team would contend with ExecuTorch's threadpool (a C++ runner has no "
            "PyTorch; `backends.executorch.RUNTIME_PROCESS_ENV`).")


def _results_table(r: dict) -> list[str]:
    lines = ["| row | backend | recipe | decode tok/s | of host limit | prefill tok/s | TTFT ms (vision share) | "
             "vision GEMM GOPS (of int8 roof) | artifact bytes | spread decode (runs / rounds) | held-out accuracy | "
             "e2e next-token KL vs fp32 (mean) | decoder-case KL vs fp32 (max) | decoder-case top-1 (min) |",
             "|" + "---|" * 14]
    for row in r["rows"]:
        ttft = "decoder only" if row["decoder_only"] or not row["ttft_ms"] else (
            f"{_metric(row['ttft_ms'])} ({_pct(row['vision_share'])})")
        acc = row["accuracy"]
        if acc:
            accuracy = f"{acc['heldout_accuracy']:.3f} ({acc['heldout_correct']}/{acc['heldout_n']})"
            e2e, kl, top1 = _num(acc.get("e2e_kl_mean"), 2), _num(acc["kl_max"], 2), _num(acc["top1_min"], 3)
        else:
            accuracy = e2e = kl = top1 = "n/a (*)" if row["kind"] == "export_llm" else "–"
        recipe = row["recipe"] + (f" as of {row['commit'][:7]}" if row.get("commit") else "")
        lines.append(f"| `{row['name']}` | {row['backend']} | {recipe} | "
                     f"{_metric(row['decode_tokens_per_s'])} | {_pct(row['bandwidth_fraction'])} of "
                     f"{_num(row['host_limit_decode_tokens_per_s'])} tok/s | {_metric(row['prefill_tokens_per_s'])} | "
                     f"{ttft} | {_vision_gops(row)} | {_num(row['artifact_bytes'])} | "
                     f"{_spread(row['decode_tokens_per_s'])} | "
                     f"{accuracy} | {e2e} | {kl} | {top1} |")
    return lines


def _accuracy_words(acc: dict | None) -> str:
    if not acc:
        return "not measured"
    return (f"held-out {acc['heldout_accuracy']:.3f}, e2e next-token KL mean {_num(acc.get('e2e_kl_mean'), 2)} "
            f"(top-1 {_num(acc.get('e2e_top1'), 3)}), decoder-case KL max {_num(acc['kl_max'], 2)}")


def _ci(ci: list | None) -> str:
    """`` [low, high]`` of a 95 % confidence interval; "" for none."""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


_BEFORE_AFTER_LABELS = {"ttft_ms": "time to first token, ms (image + prompt)", "vision_ms": "vision encoder, ms",
                        "prefill_ms": "prefill of image + prompt, ms", "prefill_tokens_per_s":
                        "prefill tok/s (text-only prompt)", "decode_tokens_per_s": "decode tok/s"}


def _schemes_words(row: dict | None) -> str:
    """How a row of ours stores each part (``rows.schemes``): "decoder 8da4w g128, ..."; "" for none."""
    return ", ".join(f"{k} {v}" for k, v in ((row or {}).get("schemes") or {}).items())


def _delegation_words(row: dict, method: str) -> str:
    m = next((d for d in row.get("delegation") or [] if d["method"] == method), None)
    return "–" if m is None else (f"{m['delegated_subgraphs']} subgraphs, {m['delegated_nodes']} XNNPACK / "
                                  f"{m['portable_nodes']} portable nodes")


def _before_after(r: dict) -> list[str]:
    ba = r.get("before_after")
    if not ba:
        return []
    by = {row["name"]: row for row in r["rows"]}
    before, after = by[ba["before"]], by[ba["after"]]
    n = len(r["rounds"])
    lines = ["", f"### Before / after: `{before['name']}` vs `{after['name']}`", "",
             f"The default snapdragon program as commit {ba['commit'][:12]} made it (its own "
             f"`recipes/{before['recipe']}.toml`: {_schemes_words(before)}), built by that commit's own code, "
             f"beside today's ({_schemes_words(after)}), both timed and measured by today's runtime in the same {n} "
             "interleaved rounds (fresh processes, the order reversed every other round). After / before: the median "
             "of the per-round ratios with its 95 % confidence interval (distribution-free; none under 6 rounds).", "",
             "| | before | after | after / before [95 % CI] | rounds after faster |", "|---|---|---|---|---|"]
    for m, label in _BEFORE_AFTER_LABELS.items():
        ratio = ba["ratios"].get(m)
        if not ratio:
            continue
        lines.append(f"| {label} | {_metric(before[m])} | {_metric(after[m])} | "
                     f"{ratio['median_ratio']:.3f}{_ci(ratio.get('ci95'))} | "
                     f"{ratio['rounds_after_faster']} of {ratio['rounds']} |")
    lines.append(f"| vision share of TTFT | {_pct(before['vision_share'])} | {_pct(after['vision_share'])} | | |")
    bb, ab = before["build"] or {}, after["build"] or {}
    for label, b, a, note in (("build wall s", bb.get("wall_s"), ab.get("wall_s"), " (one build each)"),
                              ("build peak RSS MB", bb.get("peak_rss_mb"), ab.get("peak_rss_mb"), " (one build each)"),
                              ("artifact bytes", before["artifact_bytes"], after["artifact_bytes"], "")):
        ratio = f"{a / b:.3f}{note}" if a and b else "–"
        lines.append(f"| {label} | {_num(b)} | {_num(a)} | {ratio} | |")
    for method in ("vision_encoder", "text_decoder"):
        lines.append(f"| `{method}` delegation | {_delegation_words(before, method)} | "
                     f"{_delegation_words(after, method)} | | |")
    lines.append(f"| accuracy on the demo | {_accuracy_words(before['accuracy'])} | "
                 f"{_accuracy_words(after['accuracy'])} | | |")
    return lines


def _versus(r: dict) -> list[str]:
    if not r["versus_export_llm"]:
        return []
    default = _schemes_words(next((row for row in r.get("rows", []) if row["name"] == DEFAULTS[0]), None))
    lines = ["", "**Ours / export_llm** (tokens/s ratios, text-only prompt; `g32`, `g128`: the same group size; "
             f"`defaults`: each tool's default program, ours `snapdragon-8da4w`{f' ({default})' if default else ''} "
             "against export_llm's documented default group size 128):", "",
             "| pair | ours | measurement | prefill ratio (ours ahead) | decode ratio (ours ahead) |",
             "|---|---|---|---|---|"]
    for g, v in r["versus_export_llm"].items():
        it = v["interleaved"]
        pair = g if g == "defaults" else f"g{v['group_size']}"
        lines.append(f"| {pair} | `{v['ours']}` vs `{v['export_llm']}` | {it['decode']['rounds']} interleaved "
                     f"rounds (fresh processes), median ratio | {it['prefill']['median_ratio']:.3f} "
                     f"({it['prefill']['rounds_ours_at_least_as_fast']} of {it['prefill']['rounds']}) | "
                     f"{it['decode']['median_ratio']:.3f} ({it['decode']['rounds_ours_at_least_as_fast']} of "
                     f"{it['decode']['rounds']}) |")
        ab = v.get("ab")
        if ab:
            lines.append(f"| {pair} | `{v['ours']}` vs `{v['export_llm']}` | paired A/B in one process, "
                         f"{ab['pairs']} pairs ({ab['prompt_tokens']}-token prefill + {ab['burst']} decode steps), "
                         f"median ratio [95 % CI] | "
                         f"{ab['prefill']['ratio_median']:.3f}{_ci(ab['prefill'].get('ratio_ci95'))} "
                         f"({ab['prefill']['pairs_ours_at_least_as_fast']} of {ab['pairs']}) | "
                         f"{ab['decode']['ratio_median']:.3f}{_ci(ab['decode'].get('ratio_ci95'))} "
                         f"({ab['decode']['pairs_ours_at_least_as_fast']} of {ab['pairs']}) |")
    lines += ["", "Accuracy beside each pair (on the trained demo; export_llm's own program cannot be measured there: "
              "it is exported from random weights by ExecuTorch's model class and takes tokens, not the image "
              "embeddings the demo's questions need, so its scheme as built by us stands in for it):", ""]
    for g, v in r["versus_export_llm"].items():
        acc = v.get("accuracy") or {}
        stand_in = acc.get("export_llm_scheme_built_by_us")
        lines.append(f"- {g}: ours `{v['ours']}`: {_accuracy_words(acc.get('ours'))}; export_llm "
                     f"{v['export_llm_group_size']}-group scheme"
                     + (f" (our `{stand_in}`): {_accuracy_words(acc.get('export_llm_scheme_accuracy'))}."
                        if stand_in else ": not measured."))
    for g, v in r["versus_export_llm"].items():
        prof = v.get("profile_ops")
        if not prof:
            continue
        ours, theirs = prof["ours"], prof.get("export_llm") or {}
        names = list(dict.fromkeys([*ours["ms_per_step"], *theirs.get("ms_per_step", {})]))
        lines += ["", f"Per-operator profile (ETDump), group size {g[1:]}, {_threads(prof['threads'])}, decode steps "
                  f"after a {prof['prompt_tokens']}-token prompt (medians per step; profiling adds overhead):", "",
                  "| event | ours ms/step | ours calls/step | export_llm ms/step | export_llm calls/step |",
                  "|---|---|---|---|---|"]
        for n in names:
            lines.append(f"| {n} | {_num(ours['ms_per_step'].get(n), 3)} | {_num(ours['calls_per_step'].get(n))} | "
                         f"{_num(theirs.get('ms_per_step', {}).get(n), 3)} | "
                         f"{_num(theirs.get('calls_per_step', {}).get(n))} |")
    return lines


def _frontier(r: dict, plot: str | None) -> list[str]:
    fr = r.get("frontier")
    if not fr:
        return []
    lines = ["", "### The 8da4w speed/accuracy frontier", "",
             "Our ExecuTorch 8da4w programs, each differing from a neighbour on one axis (decoder group size, "
             "vision encoder 8da4w vs 8da8w, token embedding int4 vs int8); speed at this shape, accuracy on the demo: "
             "the whole program's next-token KL against fp32 over the held-out pairs (the reference's answer "
             "teacher-forced; quantized vision encoder and embedding in the loop) is the axis; the decoder cases' KL "
             "(reference embeddings in) and held-out exact-match accuracy beside it. *On the frontier*: no other "
             f"point is at least as fast and at least as accurate. The default is `{fr['default']}`.", "",
             "| row | decoder / lm_head | vision encoder | embedding | artifact bytes | decode tok/s | TTFT ms "
             "(vision ms) | e2e KL mean | e2e KL max | e2e top-1 | decoder-case KL max | held-out | on the frontier: "
             "decode / TTFT |", "|" + "---|" * 13]
    yes = {True: "yes", False: "no", None: "–"}
    for p in fr["points"]:
        sch = p["schemes"] or {}
        name = f"`{p['row']}`" + (" (default)" if p["row"] == fr["default"] else "")
        lines.append(f"| {name} | {sch.get('decoder', 'fp32')} / {sch.get('lm_head', 'fp32')} | "
                     f"{sch.get('image_encoder', 'fp32')} | {sch.get('embed_tokens', 'fp32')} | "
                     f"{_num(p['artifact_bytes'])} | {_num(p['decode_tokens_per_s'])} | {_num(p['ttft_ms'])} "
                     f"({_num(p['vision_ms'])}) | {_num(p['e2e_kl_mean'], 3)} | {_num(p['e2e_kl_max'], 3)} | "
                     f"{_num(p['e2e_top1'], 3)} | {_num(p['kl_max'], 3)} | {_num(p['heldout_accuracy'], 3)} | "
                     f"{yes[p['on_frontier']['decode_tokens_per_s']]} / {yes[p['on_frontier']['ttft_ms']]} |")
    if plot:
        lines += ["", f"![8da4w frontier, {r['shape']['name']}]({(PLOTS / plot).as_posix()})"]
    return lines


def _builds(r: dict) -> list[str]:
    lines = ["", "Builds (cached by a hash of the recipe's values, the checkpoint's shape and the package; "
             "`cached`: reused from an earlier run, so its wall time and peak RSS are those of the run that built "
             "it, often beside other builds):", "",
             "| row | build wall s | build peak RSS MB | parity passed | cached | key |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        b = row["build"]
        if not b:
            continue
        passed = {True: "yes", False: "no"}.get(b.get("parity_passed"), "–")
        lines.append(f"| `{row['name']}` | {_num(b.get('wall_s'))} | {_num(b.get('peak_rss_mb'))} | {passed} | "
                     f"{'yes' if b.get('cached') else 'no'} | {b['key'][:12]} |")
    return lines


def _predictions(r: dict) -> list[str]:
    preds = r["predictions"]["rows"]
    if not preds:
        return []
    measured = {row["name"]: row for row in r["rows"]}
    lines = ["", "Predicted on the devices (`profiles.DeviceProfile.predict` on each build's recorded costs; "
             "`mvlm-export bench DIR --profile NAME` prints the same beside a measurement), with this host's "
             "measurement of the same build:", "",
             "| row | device profile | decode tok/s | prefill tok/s | image encode ms | assumptions | "
             "here: decode / prefill tok/s |", "|---|---|---|---|---|---|---|"]
    for p in preds:
        m = measured[p["row"]]
        lines.append(f"| `{p['row']}` | {p['profile']} | {_num(p['decode_tokens_per_s'])} | "
                     f"{_num(p['prefill_tokens_per_s'])} | {_num(p['vision_ms'])} | {p['assumptions']}"
                     f"{'; ' + p['validity'] if p.get('validity') else ''} | "
                     f"{_metric(m['decode_tokens_per_s'])} / {_metric(m['prefill_tokens_per_s'])} |")
    return lines


def _calibration(fit: list[dict]) -> list[str]:
    lines = ["## Device profiles: predicted vs published", "",
             "Each profile's two efficiency factors are calibrated on published figures (cited in "
             "`device_profiles/*.toml`). The fit, per published figure: the profile's prediction for the published "
             "model's costs (MobileVLM-1.7B at q4_k's ~4.5 bits per decoder weight; Llama 3.2 1B SpinQuant as the "
             "snapdragon-8-gen-3 profile counts it), and predicted / published (a range's midpoint).", "",
             "| profile | metric | published model | published | predicted | predicted / published | source |",
             "|---|---|---|---|---|---|---|"]
    for c in fit:
        pub = c["published"]
        pub = f"{pub[0]:g}–{pub[1]:g}" if isinstance(pub, list) else f"{pub:g}"
        lines.append(f"| {c['profile']} | {METRIC_LABELS[c['metric']]} | {c['model']} | {pub} | "
                     f"{_num(c['predicted'])} | {c['ratio']:.2f} | {c['source']} |")
    return lines


METHOD = """\
How to read the tables. Rows are backend x recipe on this host's CPU. *Decode* and *prefill* come from a
text-only request (the same prompt length for every row, as the decoder-only peers are measured); *TTFT* (time to
first token) from an image + prompt request: vision encoder + prefill of the image tokens and the prompt, with the
vision encoder's share. Each figure is the median of every timed run over interleaved rounds (each row in a fresh
process per round, ours / export_llm pairs back to back, the order reversed every other round); *spread* is
(p90 - p10) / p50 of the runs within a round (median over rounds) / of the rounds' p50s. *Of host limit*: decode
tok/s as a fraction of this host's bandwidth roof = measured memory bandwidth / bytes of weights read per token (the
build's
`costs.decoder_bytes_per_token`; export_llm: its .pte less the fp32 embedding table; ONNX Runtime's int4: its
decoder graph's bytes; eager: the fp32 linears). *Vision GEMM GOPS*: the vision encoder's linear operations per
image (the build's `costs.vision_ops`) / its time, and their fraction of this host's int8 GEMM roof (one 8da8w
linear of a ViT-L/14 MLP in XNNPACK, `benchsuite/roof.py`). *Artifact bytes*: the files the host's runtime loads.
Accuracy is measured on the trained demo checkpoint built with the same recipe: held-out exact-match accuracy
(`demo/evaluate.py`); the whole program's next-token KL against the fp32 reference over the same held-out pairs
(the reference's answer teacher-forced through both; every quantized part in the loop); and the decoder alone on
the golden cases (the reference's embeddings in: logits KL, worst case, and top-1), so rows of different recipes
compare on both speed and accuracy; at the random-weight shapes only speed is meaningful.
(*) export_llm's programs are exported from random weights by ExecuTorch's own model class and take tokens, not
image embeddings: no accuracy is measured for them; their scheme built by our pipeline (`export_llm-scheme-gN`:
every linear 8da4w HQQ in groups of N, embedding and vision encoder fp32) stands in beside each ratio.
Speed does not depend on weight values; the host's speed drifts by more than some differences shown, so compare
rows within one table only."""


def render(results: list[dict], plots: dict[str, str | None], frontier_plots: dict[str, str | None]) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m mobilevlm_export.benchsuite` (`make bench`): the latest suite run of each shape, "
             "not history (raw data: the suite's `results-<shape>.json`; older measurements: "
             "`benchmarks/results/`).", "", METHOD]
    for r in results:
        lines += ["", f"## {r['shape']['title']} (`--shape {r['shape']['name']}`)", "", *_machine(r), "",
                  *_results_table(r)]
        name = plots.get(r["shape"]["name"])
        if name:
            lines += ["", f"![decode tok/s and time to first token, {r['shape']['name']}]({(PLOTS / name).as_posix()})"]
        elif name is None:
            lines += ["", "(No plot: matplotlib is not installed; `pip install -e '.[dev]'` adds it.)"]
        lines += _before_after(r) + _versus(r) + _frontier(r, frontier_plots.get(r["shape"]["name"]))
        lines += _builds(r) + _predictions(r)
        for note in r.get("notes") or []:
            lines += ["", f"Note: {note}"]
    if results:
        lines += ["", *_calibration(results[0]["predictions"]["calibration"])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, plot: bool = True) -> Path:
    """``out/BENCHMARKS.md`` (and ``out/benchmarks/plots/benchmarks-<shape>.png``) from the results in ``out``;
    ``plot`` False: no images."""
    out = Path(out)
    results = load_results(out)
    plots: dict[str, str | None] = {}
    frontier_plots: dict[str, str | None] = {}
    for r in results:
        shape = r["shape"]["name"]
        plots[shape] = plot_results(r, out / PLOTS / f"benchmarks-{shape}.png") if plot else ""
        if plot and r.get("frontier"):
            frontier_plots[shape] = plot_frontier(r["frontier"], f"8da4w frontier: {r['shape']['title']}, "
                                                  f"{r['environment']['cpu_model']}",
                                                  out / PLOTS / f"frontier-{shape}.png")
    path = out / REPORT
    path.write_text(render(results, plots, frontier_plots))
    return path
