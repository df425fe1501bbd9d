"""The 8da4w speed/accuracy frontier: the suite's ``frontier`` rows (our ExecuTorch 8da4w programs that differ on
one axis at a time: decoder group size 32/64/128, vision encoder 8da4w vs 8da8w, token embedding int4 vs int8),
each with its speed at the run's shape and its accuracy on the trained demo: the whole program's next-token KL
against the fp32 reference over the held-out pairs (``worker.e2e_agreement``: the quantized vision encoder and
embedding are in the loop, which the decoder golden cases cannot see; held-out accuracy saturates on the demo).

A point is *on the frontier* of a speed metric when no other point is at least as good on both that metric and
the KL, and better on one (decode tok/s: higher is better; time to first token: lower is better)."""

from __future__ import annotations

from mobilevlm_export.benchsuite.rows import DEFAULTS

ACCURACY = "e2e_kl_mean"  # the accuracy axis (lower is better)
SPEEDS = {"decode_tokens_per_s": 1, "ttft_ms": -1}  # speed metric -> +1: higher is better, -1: lower is better


def _dominated(point: dict, others: list[dict], metric: str) -> bool:
    sign = SPEEDS[metric]
    s, a = sign * point[metric], point[ACCURACY]
    for o in others:
        if o is point:
            continue
        os_, oa = sign * o[metric], o[ACCURACY]
        if os_ >= s and oa <= a and (os_ > s or oa < a):
            return True
    return False


def frontier(table: list[dict]) -> dict | None:
    """``{"accuracy_metric", "default", "points": [{row, schemes, artifact_bytes, decode_tokens_per_s, ttft_ms,
    vision_ms, e2e_kl_mean, e2e_kl_max, e2e_top1, kl_max (the decoder cases'), heldout_accuracy, on_frontier:
    {metric: bool}}]}`` of the rows marked
    ``frontier`` that were timed and have an accuracy; None when fewer than two such rows ran."""
    points = []
    for row in table:
        acc = row.get("accuracy")
        if not row.get("frontier") or not acc or acc.get(ACCURACY) is None or not row.get("decode_tokens_per_s"):
            continue
        points.append({"row": row["name"], "schemes": row.get("schemes"), "artifact_bytes": row["artifact_bytes"],
                       "decode_tokens_per_s": row["decode_tokens_per_s"]["p50"],
                       "ttft_ms": row["ttft_ms"]["p50"] if row.get("ttft_ms") else None,
                       "vision_ms": row["vision_ms"]["p50"] if row.get("vision_ms") else None,
                       "e2e_kl_mean": acc["e2e_kl_mean"], "e2e_kl_max": acc["e2e_kl_max"],
                       "e2e_top1": acc["e2e_top1"], "kl_max": acc["kl_max"],
                       "heldout_accuracy": acc["heldout_accuracy"]})
    if len(points) < 2:
        return None
    for p in points:
        p["on_frontier"] = {m: (None if p[m] is None else
                                not _dominated(p, [o for o in points if o[m] is not None], m)) for m in SPEEDS}
    return {"accuracy_metric": ACCURACY, "default": DEFAULTS[0], "points": points}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; None when matplotlib is not installed (the report then says
    so). The suite's plots all start here."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_frontier(result: dict, title: str, path) -> str | None:
    """Decode tok/s and time to first token against the accuracy metric, one point per row, the default marked;
    None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    points = result["points"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, (metric, label) in zip(axes, (("decode_tokens_per_s", "decode tokens/s (higher is better)"),
                                          ("ttft_ms", "time to first token, ms (lower is better)")), strict=True):
        shown = [p for p in points if p[metric] is not None]
        edge = sorted((p for p in shown if p["on_frontier"][metric]), key=lambda p: p[ACCURACY])
        ax.plot([p[ACCURACY] for p in edge], [p[metric] for p in edge], color="#999999", lw=1, zorder=1,
                label="frontier")
        for p in shown:
            default = p["row"] == result["default"]
            ax.scatter(p[ACCURACY], p[metric], s=70 if default else 40, zorder=2,
                       color="#c44e52" if default else "#4c72b0", marker="*" if default else "o")
            ax.annotate(p["row"] + (" (default)" if default else ""), (p[ACCURACY], p[metric]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("next-token KL vs fp32, whole program, demo held-out pairs (mean; lower is better)")
        ax.set_ylabel(label)
        ax.margins(x=0.25, y=0.15)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
