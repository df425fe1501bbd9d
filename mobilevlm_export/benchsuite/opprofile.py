"""Where a decode step's time goes: ExecuTorch's own per-operator profile (ETDump) of our text decoder, and of an
export_llm program beside it, in one process.

Each program prefills the same number of random tokens, then the two alternate bursts of ``BURST`` decode steps at
the same cache positions (who goes first alternates). The runtime records every instruction (delegate calls,
portable kernels and the XNNPACK operators inside each delegate call) with its start and end; per decode step
this sums the time of each event name and reports, per program, the medians over steps in ms
(``Method::execute`` is the whole step, ``DELEGATE_CALL`` contains the XNNPACK operators) and the median time of
one call of each. Profiling adds overhead of its own: compare programs within one profile, not with the timed
rounds' tokens/s.
"""

from __future__ import annotations

import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from mobilevlm_export.errors import UserError

BURST = 8


def _steps(etdump: Path, skip: int) -> tuple[list[dict[str, float]], dict[str, list[float]]]:
    """Per run (one method execution) the total ms per event name, and every single call's ms per event name;
    the first ``skip`` runs (prefill) are left out."""
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    dump = deserialize_from_etdump_flatcc(etdump.read_bytes())
    steps, calls = [], defaultdict(list)
    runs = [r for r in dump.run_data if r.name == "Execute"]
    for run in runs[skip:]:
        totals: dict[str, float] = defaultdict(float)
        for ev in run.events:
            p = ev.profile_event
            # runtime events carry a name, XNNPACK's operators a debug string such as "Add (ND) #3"
            name = p and (p.name or (p.delegate_debug_id_str or "").split(" #")[0])
            if not name:
                continue
            ms = (p.end_time - p.start_time) / 1e6
            totals[name] += ms
            calls[name].append(ms)
        if totals:
            steps.append(totals)
    return steps, calls


def summarize(steps: list[dict[str, float]], calls: dict[str, list[float]], top: int = 10) -> dict:
    """The ``top`` event names by median ms per step: ms per step, calls per step, median ms per call."""
    if not steps:
        return {"decode_steps": 0, "ms_per_step": {}, "calls_per_step": {}, "ms_per_call": {}}
    names = {n for s in steps for n in s}
    per_step = {n: statistics.median(s.get(n, 0.0) for s in steps) for n in names}
    ranked = sorted(per_step.items(), key=lambda kv: -kv[1])[:top]
    return {"decode_steps": len(steps),
            "ms_per_step": {n: round(v, 3) for n, v in ranked},
            "calls_per_step": {n: round(len(calls[n]) / len(steps), 1) for n, _ in ranked},
            "ms_per_call": {n: round(statistics.median(calls[n]), 4) for n, _ in ranked}}


def profile_method(module, method: str, inputs: tuple, runs: int, top: int = 10) -> dict:
    """``summarize`` of ``runs`` executions of ``method`` with ``inputs`` on ``module`` (loaded with ETDump on),
    after one warm-up execution that is left out; the count of executions under ``"runs"``."""
    for _ in range(runs + 1):
        module.run_method(method, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / f"{method}.etdp"
        module.write_etdump_result_to_file(str(dump))
        summary = summarize(*_steps(dump, skip=1), top)
    summary["runs"] = summary.pop("decode_steps")
    return summary


def profile_ops(ours: Path, peer: Path | None = None, threads: int | None = 2, prompt: int = 64,
                rounds: int = 6) -> dict:
    """The per-operator profile of ``rounds`` bursts of ``BURST`` decode steps after a ``prompt``-token prefill,
    of our build ``ours`` (its ``text_decoder``) and, given, export_llm's ``peer`` .pte (``forward``)."""
    import json

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels)
    import executorch.kernels.quantized  # noqa: F401  (quantized embeddings)
    import torch
    from executorch.extension.pybindings import portable_lib

    from mobilevlm_export.backends.executorch import set_threads

    manifest = json.loads((Path(ours) / "manifest.json").read_text())
    dims = manifest["model"]["dims"]
    if prompt + BURST > manifest["graphs"]["decoder"]["contract"]["ranges"]["seq"]["max"]:
        raise UserError(f"op profile: prompt {prompt} + {BURST} decode steps exceed the cache")
    if rounds < 1:
        raise UserError(f"op profile: rounds {rounds} must be at least 1")
    set_threads(threads)
    mine = portable_lib._load_for_executorch(str(Path(ours) / "model.pte"), enable_etdump=True)
    theirs = portable_lib._load_for_executorch(str(peer), enable_etdump=True) if peer else None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, dims["vocab"], (1, prompt), generator=gen)

    def run_ours(pos: int, count: int) -> None:
        emb = torch.randn(1, count, dims["hidden"], generator=gen)
        mine.run_method("text_decoder", (emb, torch.arange(pos, pos + count)))

    def run_peer(pos: int, count: int) -> None:
        tokens = ids if count > 1 else torch.tensor([[int(ids[0, pos % prompt])]])
        theirs.run_method("forward", (tokens, torch.tensor([pos])))

    programs = [("ours", mine, run_ours)] + ([("export_llm", theirs, run_peer)] if theirs else [])
    for _, _, run in programs:
        run(0, prompt)
    for r in range(rounds):
        for _, _, run in (programs if r % 2 == 0 else programs[::-1]):
            for i in range(BURST):
                run(prompt + i, 1)
    out = {"ours": str(ours), "export_llm": str(peer) if theirs else None, "threads": threads,
           "prompt_tokens": prompt, "rounds": rounds, "burst": BURST}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, _ in programs:
            path = Path(tmp) / f"{name}.etdp"
            module.write_etdump_result_to_file(str(path))
            out[name] = summarize(*_steps(path, skip=1))
    return out
