"""The suite's work that runs in a fresh process, one task per process:

    python -m mobilevlm_export.benchsuite.worker TASK.json

TASK.json: ``{"task": ..., "result": PATH, ...}``; the result is written to PATH as JSON (stdout is left to the
libraries). Tasks: ``time`` (one row's timings: ``bench.measure`` on a text-only request, and on the image + text
request for the time to first token), ``ab`` (``ab.paired_ab``), ``profile_ops`` (``opprofile.profile_ops``),
``accuracy`` (held-out accuracy and logits KL / top-1 against fp32), ``checkpoint`` (a synthetic checkpoint),
``ort_int4`` (``peers.ort_int4``), ``gemm_roof`` (``roof.gemm_roof``: the host's int8 GEMM throughput). Each timing
process measures one program alone, so no other program's memory, threads or allocator state is in it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mobilevlm_export.benchsuite.rows import EAGER, EXPORT_LLM


class _Loaded:
    """A program whose runners are opened once for both of a row's requests (at full size, loading twice would
    double the load time, and the peak memory until the first copy is freed)."""

    def __init__(self, prog) -> None:
        self.prog, self.manifest, self._runners = prog, prog.manifest, None

    def runners(self, threads):
        if self._runners is None:
            self._runners = self.prog.runners(threads)
        return self._runners

    def generator(self, runners):
        return self.prog.generator(runners)

    def bench_notes(self) -> list[str]:
        return self.prog.bench_notes()


def open_program(kind: str, path: str, dims: dict | None = None):
    """What ``bench.measure`` runs for a row of ``kind``: a built directory, the eager reference on a
    checkpoint, or an export_llm program."""
    if kind == EAGER:
        from mobilevlm_export.benchsuite.peers import EagerModel

        return EagerModel(Path(path))
    if kind == EXPORT_LLM:
        from mobilevlm_export.benchsuite.peers import ExportLlmProgram

        return ExportLlmProgram(Path(path), dims)
    from mobilevlm_export.runtime.artifacts import open_artifacts

    return open_artifacts(path)


def time_row(kind: str, path: str, threads: int | None, prompt_tokens: int, decode_tokens: int, runs: int,
             warmup: int, ttft: bool, ttft_decode_tokens: int, dims: dict | None = None) -> dict:
    """``{"text": bench.measure(text-only), "image": bench.measure(image + text) or None, "load_avg",
    "peak_rss_mb"}``: each with every timed run's value in ``samples``, which the suite pools over rounds."""
    from mobilevlm_export.bench import measure, peak_rss_mb

    prog = _Loaded(open_program(kind, path, dims))
    text = measure(prog, threads, prompt_tokens, decode_tokens, runs, warmup, text_only=True)  # (no vision run)
    image = measure(prog, threads, prompt_tokens, ttft_decode_tokens, runs, warmup) if ttft else None
    return {"text": text, "image": image, "load_avg": [round(x, 2) for x in os.getloadavg()],
            "peak_rss_mb": round(peak_rss_mb(), 1)}


E2E_NEW_TOKENS = 4  # as the held-out accuracy's answers (one word, a few tokens)


def e2e_agreement(path: str, samples: int) -> dict:
    """The whole program against the fp32 reference on the demo's held-out pairs, quantized vision encoder and
    embedding included (the decoder golden cases feed the decoder the reference's embeddings, so they cannot see
    those parts): per pair, the reference's greedy answer (up to ``E2E_NEW_TOKENS``) is teacher-forced through
    both, and the next-token distributions compared at every answer position: KL(reference || program) mean and
    max, and the share of positions whose top-1 agrees."""
    import numpy as np
    import torch

    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.reference import Reference
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
    from mobilevlm_export.demo.evaluate import KINDS
    from mobilevlm_export.demo.shapes import HELDOUT_SEED, QUESTIONS, render
    from mobilevlm_export.generation import SamplingParams
    from mobilevlm_export.runtime.artifacts import open_artifacts
    from mobilevlm_export.runtime.prompt import build_prompt_ids
    from mobilevlm_export.verify import kl_divergence

    ref = Reference(load_checkpoint(demo_checkpoint_dir()))
    art = open_artifacts(path)
    pipe = art.generator()
    kls, agree = [], []
    for i in range(samples):
        sample = render(HELDOUT_SEED, i)
        ids = build_prompt_ids(ref.tokenizer, QUESTIONS[KINDS[i % len(KINDS)]])
        embeds = ref.splice(ids, ref.image_embeds(ref.ckpt.preprocess(sample.image)))
        answer = ref.generate_from_embeds(embeds, SamplingParams(max_new_tokens=E2E_NEW_TOKENS))
        with torch.inference_mode():
            full = torch.cat([embeds, ref.model.embed_tokens(torch.tensor([answer[:-1]], dtype=torch.long))], dim=1)
            want = ref.model.language_model(inputs_embeds=full, use_cache=False).logits[0, embeds.shape[1] - 1:]
        want = want.float().numpy()
        pixels = art.preprocess(sample.image)
        got = [pipe.prefill(ids, pipe.image_embeds(pixels[None]))]
        got += [pipe.step(token) for token in answer[:-1]]
        for w, g in zip(want, got, strict=True):
            kls.append(kl_divergence(w[None], np.asarray(g, np.float32)[None]))
            agree.append(int(np.argmax(w)) == int(np.argmax(g)))
    return {"e2e_kl_mean": float(np.mean(kls)), "e2e_kl_max": float(np.max(kls)),
            "e2e_top1": float(np.mean(agree)), "e2e_positions": len(kls), "e2e_pairs": samples}


def accuracy(kind: str, path: str, samples: int, threads: int | None, reverify: bool) -> dict:
    """Held-out accuracy over ``samples`` pairs (``demo.evaluate``) and the decoder logits' KL and top-1 against
    the fp32 reference over the golden cases: from the build's own verification, or verified afresh
    (``reverify``: a directory whose manifest's verification is not its own)."""
    from mobilevlm_export.demo.evaluate import heldout_accuracy

    if kind == EAGER:
        acc, records = heldout_accuracy(ckpt_dir=path, n=samples)
        return {"heldout_accuracy": acc, "heldout_correct": sum(r["correct"] for r in records),
                "heldout_n": len(records), "kl_max": 0.0, "kl_mean": 0.0, "top1_min": 1.0, "logits_cases": 0,
                "e2e_kl_mean": 0.0, "e2e_kl_max": 0.0, "e2e_top1": 1.0, "e2e_positions": 0, "e2e_pairs": 0,
                "note": "the reference itself"}
    from mobilevlm_export.runtime.artifacts import open_artifacts

    art = open_artifacts(path)
    if reverify:
        from mobilevlm_export.verify import verify_artifacts

        metrics = verify_artifacts(art, threads).to_dict()["metrics"]
    else:
        metrics = (art.manifest.get("verification") or {}).get("metrics") or []
    logits = [m for m in metrics if m.get("kl") is not None]
    acc, records = heldout_accuracy(n=samples, artifacts=path)
    kls = [m["kl"] for m in logits]
    return {"heldout_accuracy": acc, "heldout_correct": sum(r["correct"] for r in records), "heldout_n": len(records),
            "kl_max": max(kls) if kls else None, "kl_mean": sum(kls) / len(kls) if kls else None,
            "top1_min": min(m["top1"] for m in logits) if logits else None, "logits_cases": len(logits),
            **e2e_agreement(path, samples), "note": "verified afresh" if reverify else "the build's verification"}


def checkpoint(out: str, shape: str) -> dict:
    """Write the synthetic checkpoint of ``shape`` (``cache.SYNTHETIC``) into ``out``."""
    import time

    import torch

    from mobilevlm_export.bench import peak_rss_mb
    from mobilevlm_export.benchsuite.cache import SYNTHETIC, synthetic_dims
    from mobilevlm_export.checkpoint.synthetic import write_checkpoint

    t0 = time.perf_counter()
    write_checkpoint(Path(out), synthetic_dims(shape), projector=SYNTHETIC["projector"], shards=SYNTHETIC["shards"],
                     seed=SYNTHETIC["seed"], dtype=getattr(torch, SYNTHETIC["dtype"]))
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def uses_executorch(task: dict) -> bool:
    if task["task"] in ("ab", "profile_ops", "gemm_roof"):
        return True
    if task["task"] != "time":
        return False
    path = Path(task["path"])
    return task["kind"] == EXPORT_LLM or (path / "model.pte").is_file()


def _size_threadpool(threads: int | None) -> None:
    """Size ExecuTorch's process-wide threadpool before any program is loaded: XNNPACK's delegates keep the pool
    they were initialized with, and a reset after loading (``backends.executorch.set_threads`` before a run)
    leaves them a freed pool (seen: a segfault, an abort or a hang at --threads 1 on a 2-core host)."""
    from mobilevlm_export.backends.executorch import set_threads

    set_threads(threads)


def run_task(task: dict) -> dict:
    kind = task["task"]
    if uses_executorch(task):
        _size_threadpool(task.get("threads"))
    if kind == "time":
        return time_row(task["kind"], task["path"], task["threads"], task["prompt_tokens"], task["decode_tokens"],
                        task["runs"], task["warmup"], task["ttft"], task["ttft_decode_tokens"], task.get("dims"))
    if kind == "ab":
        from mobilevlm_export.benchsuite.ab import paired_ab

        return paired_ab(Path(task["ours"]), Path(task["peer"]), task["threads"], task["pairs"],
                         task["prompt_tokens"], task["burst"])
    if kind == "profile_ops":
        from mobilevlm_export.benchsuite.opprofile import profile_ops

        return profile_ops(Path(task["ours"]), Path(task["peer"]) if task.get("peer") else None, task["threads"],
                           task["prompt_tokens"], task["rounds"])
    if kind == "accuracy":
        return accuracy(task["kind"], task["path"], task["samples"], task["threads"], task["reverify"])
    if kind == "checkpoint":
        return checkpoint(task["out"], task["shape"])
    if kind == "gemm_roof":
        from mobilevlm_export.benchsuite.roof import gemm_roof

        return gemm_roof(task["threads"], task["repeats"])
    if kind == "ort_int4":
        from mobilevlm_export.bench import peak_rss_mb
        from mobilevlm_export.benchsuite.peers import ort_int4

        return {**ort_int4(Path(task["fp32_dir"]), Path(task["out"])), "peak_rss_mb": round(peak_rss_mb(), 1)}
    raise ValueError(f"unknown task {kind!r}")


def main(argv: list[str] | None = None) -> int:
    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()  # as every entry point does
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(Path(argv[0]).read_text())
    result = run_task(task)
    Path(task["result"]).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
