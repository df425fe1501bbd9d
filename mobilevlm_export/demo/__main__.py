"""``python -m mobilevlm_export.demo``: the reference model answers every shipped sample question.

Exit code 1 when an answer differs from the expected one.
"""

from __future__ import annotations

import json
import sys

from mobilevlm_export.quiet import quiet_libraries


def main() -> int:
    quiet_libraries()  # before torch loads: the answers are the output
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.reference import Reference
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
    from mobilevlm_export.generation import SamplingParams
    from mobilevlm_export.runtime.preprocess import load_image

    ckpt = demo_checkpoint_dir()
    samples = ckpt.parent / "samples"
    ref = Reference(load_checkpoint(ckpt))
    wrong = 0
    for item in json.loads((samples / "questions.json").read_text()):
        text = ref.generate(load_image(samples / item["image"]), item["question"],
                            SamplingParams(max_new_tokens=8)).text
        ok = text == item["answer"]
        wrong += not ok
        print(f"{'ok ' if ok else 'BAD'} {item['image']:<28} {item['question']:<28} -> {text!r}"
              f"{'' if ok else ' (expected ' + repr(item['answer']) + ')'}")
    print(f"{wrong} wrong answers" if wrong else "all answers correct")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
