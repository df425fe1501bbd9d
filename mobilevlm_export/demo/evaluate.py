"""Held-out accuracy of a demo checkpoint, measured through the reference pipeline (greedy generation).

    python -m mobilevlm_export.demo.evaluate [--ckpt DIR | --artifacts DIR] [-n N]

Sample ``i`` of the held-out split (``shapes.HELDOUT_SEED``, never trained on) is asked question kind
``i % 3`` (color, shape, count); the generated text must equal the one-word answer exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilevlm_export.demo.shapes import HELDOUT_SEED, QUESTIONS, render

KINDS = tuple(QUESTIONS)


def _reference_answerer(ckpt_dir, params):
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.reference import Reference
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    ref = Reference(load_checkpoint(demo_checkpoint_dir() if ckpt_dir is None else ckpt_dir))
    return lambda image, question: ref.generate(image, question, params).text


def _artifacts_answerer(artifacts, params):
    from mobilevlm_export.runtime.artifacts import open_artifacts
    from mobilevlm_export.runtime.prompt import build_prompt_ids, decode_text

    art = open_artifacts(artifacts)
    pipe, eos = art.generator(), art.manifest["model"]["eos_token_id"]

    def answer(image, question):
        ids, _ = pipe.generate_ids(build_prompt_ids(art.tokenizer, question), art.preprocess(image), params)
        return decode_text(art.tokenizer, ids, eos)

    return answer


def heldout_accuracy(ckpt_dir: str | Path | None = None, n: int = 150,
                     artifacts: str | Path | None = None) -> tuple[float, list[dict]]:
    """Exact-match accuracy over ``n`` held-out (image, question) pairs, and one record per pair:
    ``{"index", "kind", "question", "answer", "text", "correct"}``. Answers come from the reference model of
    ``ckpt_dir`` (default: the bundled demo checkpoint) or, given ``artifacts``, from an export/build directory.
    """
    import torch

    from mobilevlm_export.generation import SamplingParams

    params = SamplingParams(max_new_tokens=4)
    ask = _artifacts_answerer(artifacts, params) if artifacts else _reference_answerer(ckpt_dir, params)
    records = []
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        for i in range(n):
            sample = render(HELDOUT_SEED, i)
            kind = KINDS[i % len(KINDS)]
            answer = sample.answer(kind)
            text = ask(sample.image, QUESTIONS[kind])
            records.append({"index": i, "kind": kind, "question": QUESTIONS[kind], "answer": answer,
                            "text": text, "correct": text == answer})
    finally:
        torch.set_num_threads(threads)
    accuracy = sum(r["correct"] for r in records) / max(1, len(records))
    return accuracy, records


def per_kind(records: list[dict]) -> dict[str, float]:
    out = {}
    for kind in KINDS:
        rs = [r for r in records if r["kind"] == kind]
        if rs:
            out[kind] = sum(r["correct"] for r in rs) / len(rs)
    return out


def main(argv: list[str] | None = None) -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint directory (default: the bundled one)")
    parser.add_argument("--artifacts", type=Path, default=None, help="an export/build directory to evaluate instead")
    parser.add_argument("-n", type=int, default=150, help="held-out pairs to ask")
    args = parser.parse_args(argv)
    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()  # as every entry point does
    t0 = time.perf_counter()
    accuracy, records = heldout_accuracy(args.ckpt, args.n, args.artifacts)
    kinds = "  ".join(f"{k} {v:.3f}" for k, v in per_kind(records).items())
    print(f"held-out accuracy {accuracy:.3f} ({sum(r['correct'] for r in records)}/{len(records)})  {kinds}  "
          f"[{time.perf_counter() - t0:.1f}s]")
    for r in records:
        if not r["correct"]:
            print(f"  #{r['index']} {r['kind']}: expected {r['answer']!r}, got {r['text']!r}")


if __name__ == "__main__":
    main()
