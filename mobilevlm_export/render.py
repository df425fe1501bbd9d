"""What a person reads: the reports of ``verify``, ``bench``, ``inspect`` and ``build``, fitted to where they are read.

On a terminal: rich tables (cells fold, never cut). Anywhere else (a CI log, a file, a pipe): plain text that
never cuts a number or a name, as pytest and trtexec print for logs: tables at their full width (as wide as their
cells, whatever the console's width), summaries one ``name: value`` per line, a failing row whole on one line
with its tolerance beside it (``FAIL graph/case output: metric = value (tolerance t) | ...``).

Parity is summarised by default: per graph and output kind (logits, KV, embeddings) the worst tensor, the row
that set it, and how many tensors the row stands for; ``verbose`` lists every tensor. Failures are always listed,
each in full. No typer here: the callers pass plain dicts and report objects and a console (``stdout_console``),
whose ``is_terminal`` decides the form.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable

from mobilevlm_export.backends import Backend

# output name -> kind, for the parity summary: the decoder's KV cache tensors (present.N.key/value), its logits,
# and everything else a graph hands on (image features and embeddings, token embeddings)
KV_PREFIXES = ("present", "past")
KIND_ORDER = ("logits", "KV", "embeddings")
PARITY_COLUMNS = ("graph", "case", "output", "max abs", "mean abs", "cosine", "top-1", "KL", "ok")


def stdout_console():
    """A rich console on stdout whose reader going away raises ``BrokenPipeError`` (the caller maps it to its
    exit code), instead of rich's own exit 1, which is a failed check's code for the CLI."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "stdout's reader is gone")

    return StdoutConsole()


def num(value, digits: int = 4) -> str:
    """A number whole, to ``digits`` significant digits (ints as they are); None as "-"; anything else as str."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value)) if abs(value) >= 1 or value == 0 else f"{value:.{digits}g}"
        return f"{value:.{digits}g}"
    return str(value)


def plain_table(headers: Iterable[str], rows: Iterable[Iterable]) -> list[str]:
    """Lines of a plain-text table: each column as wide as its widest cell (nothing cut), two spaces between,
    trailing spaces stripped. Multi-line cells are joined with "; "."""
    headers = [str(h) for h in headers]
    body = [["; ".join(str(c).splitlines()) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(headers), *(fmt(r) for r in body)]


def _emit(console, lines: Iterable[str] | str) -> None:
    """Print ``lines`` as they are: no markup, no highlighting, no wrapping at the console's width."""
    for line in [lines] if isinstance(lines, str) else lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True, emoji=False)


# on a terminal where the whole table does not fit, a column keeps the width of its widest cell up to the first of
# these with which the table fits (numbers, "yes", "NO (3 of 16)" stay on one line); wider cells (names) fold
KEEP_WIDTHS = (12, 9)


def _rich_table(title: str | None, headers: Iterable[str], rows: Iterable[Iterable], styles: dict | None = None,
                width: int | None = None):
    """A rich table whose cells fold rather than end in an ellipsis; short cells (up to ``KEEP_WIDTH``) are not
    split where the columns' widths fit ``width`` together."""
    from rich.table import Table
    from rich.text import Text

    headers, rows = list(headers), [[str(c) for c in r] for r in rows]
    widest = [max((len(line) for r in rows for line in r[i].splitlines()), default=len(h)) for i, h in
              enumerate(headers)]
    whole = [max(w, len(h)) for w, h in zip(widest, headers, strict=True)]
    fits = lambda ks: width is None or sum(ks) + 3 * len(ks) + 2 <= width  # noqa: E731  (borders, padding)
    # every cell whole where the table fits so; else the short ones; else every cell may fold (min widths over
    # the width would crop the table)
    keep = next((ks for ks in (whole, *([min(w, k) for w in widest] for k in KEEP_WIDTHS)) if fits(ks)),
                [0] * len(widest))
    table = Table(title=title)
    for h, k in zip(headers, keep, strict=True):
        table.add_column(h, overflow="fold", min_width=k or None)
    for row in rows:
        table.add_row(*(Text(str(c), style=(styles or {}).get(str(c), "")) for c in row))
    return table


def table(console, title: str | None, headers: Iterable[str], rows: Iterable[Iterable],
          styles: dict | None = None) -> None:
    """A table on ``console``: rich on a terminal, ``plain_table`` (under its title) elsewhere. ``styles``: cell
    text -> rich style (terminal only)."""
    headers, rows = list(headers), [list(r) for r in rows]
    if console.is_terminal:
        console.print(_rich_table(title, headers, rows, styles, console.width))
        return
    if title:
        _emit(console, title)
    _emit(console, plain_table(headers, rows))


def pairs(console, title: str, items: dict, indent: str = "  ") -> None:
    """A titled summary, one ``name: value`` per line (nested dicts and lists left out: their own sections say
    them); on a terminal the same lines, the title in bold."""
    if console.is_terminal:
        console.print(f"[bold]{_escape(title)}[/]")
    else:
        _emit(console, title)
    _emit(console, [f"{indent}{k}: {num(v)}" for k, v in items.items() if not isinstance(v, dict | list)])


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _status(console, word: str, ok: bool, rest: str = "") -> None:
    """``word`` (PASSED, FAILED, FAIL) coloured on a terminal, then ``rest`` as it is."""
    if console.is_terminal:
        console.print(f"[{'green' if ok else 'red'}]{word}[/]" + _escape(rest), highlight=False, soft_wrap=True)
    else:
        _emit(console, word + rest)


# ---------------------------------------------------------------------------------------------------- parity


def output_kind(output: str) -> str:
    """The kind of a graph output for the parity summary: logits, KV (the decoder's cache) or embeddings."""
    if output == "logits":
        return "logits"
    if output.split(".")[0] in KV_PREFIXES:
        return "KV"
    return "embeddings"


def parity_cells(m) -> list[str]:
    """One ``verify.Metric`` as the parity table's cells (``PARITY_COLUMNS``)."""
    return [m.graph, m.case, m.output, f"{m.max_abs:.3g}", f"{m.mean_abs:.3g}", f"{m.cosine:.7f}",
            "" if m.top1 is None else f"{m.top1:.3f}", "" if m.kl is None else f"{m.kl:.2g}",
            "yes" if m.passed else "NO"]


def _badness(m) -> tuple:
    """Sort key of a parity row, worst last: a failing row by its worst failure's severity, then the largest max
    abs error, then the lowest cosine."""
    severity = max((f.get("severity", 0.0) for f in m.failures), default=0.0)
    finite = lambda x: x if isinstance(x, float) and not math.isnan(x) else math.inf  # noqa: E731
    return (not m.passed, severity, finite(m.max_abs), -finite(m.cosine) if not math.isnan(m.cosine) else math.inf)


def parity_summary(metrics: list) -> list[dict]:
    """Per graph and output kind: ``{"graph", "kind", "tensors", "failed", "worst"}`` (the ``verify.Metric`` that
    set the group's worst figures, ``_badness``), graphs in name order, kinds in ``KIND_ORDER``."""
    groups: dict[tuple[str, str], list] = {}
    for m in metrics:
        groups.setdefault((m.graph, output_kind(m.output)), []).append(m)
    out = []
    for (graph, kind), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], KIND_ORDER.index(kv[0][1]))):
        out.append({"graph": graph, "kind": kind, "tensors": len(ms), "failed": sum(not m.passed for m in ms),
                    "worst": max(ms, key=_badness)})
    return out


def failure_line(m, f: dict) -> str:
    """A failing row whole: ``graph/case output: metric = value (tolerance t) | every figure of the row``."""
    cells = dict(zip(PARITY_COLUMNS, parity_cells(m), strict=True))
    figures = ", ".join(f"{k} {cells[k] or '-'}" for k in ("max abs", "mean abs", "cosine", "top-1", "KL"))
    return f" {m.graph}/{m.case} {m.output}: {f['metric']} = {num(f['value'])} (tolerance {num(f['tolerance'])}) " \
           f"| {figures}"


def print_report(console, report, verbose: bool = False) -> None:
    """A ``verify.VerifyReport``: the per-graph summary (every tensor with ``verbose``), the backend, the
    end-to-end agreement, each failure whole (worst first), PASSED or FAILED."""
    n = len(report.metrics)
    styles = {"NO": "red"}
    if verbose:
        table(console, f"Per-graph parity: every tensor ({n})", PARITY_COLUMNS,
              (parity_cells(m) for m in report.metrics), styles)
    else:
        rows = []
        for g in parity_summary(report.metrics):
            w = parity_cells(g["worst"])
            ok = "yes" if not g["failed"] else f"NO ({g['failed']} of {g['tensors']})"
            rows.append([g["graph"], g["kind"], str(g["tensors"]), f"{w[1]}/{w[2]}", *w[3:8], ok])
        styles.update({r[-1]: "red" for r in rows if r[-1] != "yes"})
        table(console, f"Per-graph parity: worst tensor per graph and output kind ({n} tensors; --verbose lists "
                       "each)", ("graph", "kind", "tensors", "worst (case/output)", *PARITY_COLUMNS[3:]), rows,
              styles)
    if report.backend:
        _emit(console, f"backend: {report.backend}")
    matched = sum(r.match for r in report.e2e)
    _emit(console, f"End-to-end greedy tokens: {matched}/{len(report.e2e)} pairs identical (agreement "
                   f"{report.token_agreement:.3f}, required {report.token_agreement_min:.3f})")
    for r in report.e2e:
        if not r.match:
            _status(console, "MISMATCH", False, f" {r.image}: {r.question!r}: first differing token at "
                                                f"{r.first_mismatch} (got {r.ids}, reference {r.reference_ids})")
    fails = sorted(((f.get("severity", 0.0), i, m, f) for i, m in enumerate(report.metrics) for f in m.failures),
                   key=lambda t: (-t[0], t[1]))
    for _, _, m, f in fails:
        _status(console, "FAIL", False, failure_line(m, f))
    _status(console, "PASSED" if report.passed else "FAILED", report.passed)


# ----------------------------------------------------------------------------------------------------- build


def print_build(console, manifest: dict) -> None:
    """A build's log lines, its artifact table, and the host's measured and the device's predicted figures."""
    comp = manifest["compile"]
    target = manifest["target"]
    _emit(console, [f"{target}: {line}" for line in comp["log"]])
    if comp["table"]:
        table(console, f"{target} artifacts", list(comp["table"][0]), ([num(v) for v in row.values()]
                                                                       for row in comp["table"]))
    lat = manifest.get("latency") or {}
    if "host" in lat:  # (the per-run statistics are in the manifest and `bench`'s table)
        host = dict(lat["host"])
        if "threads_requested" in host:
            host["threads"] = _threads(host)
            del host["threads_requested"]
        pairs(console, "host (measured here):", host)
    if "predicted" in lat:
        print_predicted(console, lat["predicted"])


def print_predicted(console, predicted: dict) -> None:
    """The device's predicted figures, one per line, with the assumptions and overheads behind them and, where
    the model is outside the profile's validity range, that first."""
    from mobilevlm_export.bench import METRICS

    title = f"predicted for {predicted.get('device')} (roofline {predicted.get('assumptions')}"
    over = predicted.get("overheads")
    if isinstance(over, dict):
        title += f"; fixed overheads {num(over.get('token_ms'))} ms per decoder pass, {num(over.get('image_ms'))} " \
                 "ms per image"
    title += "):"
    shown = {"validity": predicted["validity"]} if predicted.get("validity") else {}
    shown.update({METRICS.get(k, k): v for k, v in predicted.items()
                  if k not in ("device", "assumptions", "overheads", "validity")})
    pairs(console, title, shown)


# ----------------------------------------------------------------------------------------------------- bench


def print_bench(console, result: dict, runs: int, warmup: int, decode_tokens: int) -> None:
    """``bench``'s result: per metric p50, p90, min, max; where it ran; its notes; the device's prediction."""
    from mobilevlm_export.bench import METRICS

    host, env = result["host"], result["environment"]
    rows = []
    for metric, label in METRICS.items():
        s = host["stats"][metric]
        rows.append([label, *(num(s[k]) for k in ("p50", "p90", "min", "max"))])
    table(console, f"{result['target']}: {runs} runs + {warmup} warm-up, prefill {host['prefill_positions']} "
                   f"positions, decode {decode_tokens} tokens", ("metric", "p50", "p90", "min", "max"), rows)
    pairs(console, "host:", {"backend": host["backend"], "cpu": env["cpu_model"], "threads": _threads(host),
                             "peak RSS": f"{host['peak_rss_mb']} MB"})
    for note in host["notes"]:
        _emit(console, f"note: {note}")
    if "predicted" in result:
        print_predicted(console, result["predicted"])


def _threads(host: dict) -> str:
    """The threads a measurement ran on: the count, "(the runtime's default)" where none was asked for; the GPU
    for TensorRT."""
    threads = host.get("threads")
    if threads is None and host.get("backend") == Backend.TENSORRT:
        return "the GPU (TensorRT)"
    asked = host.get("threads_requested", threads)
    return num(threads) + ("" if asked else " (the runtime's default)")


# --------------------------------------------------------------------------------------------------- inspect


def _tensor(t: dict) -> str:
    return f"{t['name']} {t['dtype']}[{', '.join(map(str, t['dims']))}]"


def print_inspect(console, info: dict) -> None:
    """``inspect``'s description: architecture, parameters, dims and the graphs' inputs and outputs (on a
    terminal the first 5 of each and a count; elsewhere every one)."""
    a, d = info["architecture"], info["dims"]
    head = {"architectures": a["architectures"], "projector": a["projector"],
            "vision tower": f"{a['vision_tower']} ({info['vision_tower_source']})",
            "stored dtypes": info["stored_dtypes"], "weight files": len(info["weight_files"])}
    pairs(console, info["checkpoint"], {k: ", ".join(map(str, v)) if isinstance(v, list | dict) else v
                                        for k, v in head.items()})
    table(console, "Parameters", ("component", "parameters"), ([k, f"{v:,}"] for k, v in info["parameters"].items()))
    table(console, "Dims", ("dim", "value"), ([k, num(v)] for k, v in d.items()))
    if console.is_terminal:
        fmt = lambda ts: "\n".join(_tensor(t) for t in ts[:5]) + (  # noqa: E731
            f"\n... {len(ts) - 5} more" if len(ts) > 5 else "")
        table(console, "Graphs (dynamic KV)", ("graph", "inputs", "outputs"),
              ([g["name"], fmt(g["inputs"]), fmt(g["outputs"])] for g in info["graphs"]))
        return
    _emit(console, "Graphs (dynamic KV)")
    for g in info["graphs"]:
        _emit(console, [f"  {g['name']}:", *(f"    in:  {_tensor(t)}" for t in g["inputs"]),
                        *(f"    out: {_tensor(t)}" for t in g["outputs"])])
