"""Train the bundled demo checkpoint: a tiny MobileVLM V2 (CLIP ViT-336/14 -> LDPv2 -> LLaMA) on rendered shapes.

    python -m mobilevlm_export.demo.train [--out DIR] [--steps N]

Steps, all deterministic (fixed seeds, 2 CPU threads; the same torch build gives the same bytes):

1. the SentencePiece tokenizer (``demo.tokenizer``) is written into ``out``;
2. a random-init checkpoint is written in the real MobileVLM V2 layout: ``config.json`` (``mm_vision_tower``
   = ``vision_tower``, a relative directory holding only the tower's config and image-processor config, as the
   LDPv2 tower weights live in the checkpoint itself), ``model.safetensors`` under the original key names;
3. it is loaded back with ``load_checkpoint`` and every parameter (vision tower, projector, decoder) is trained
   on the ``demo.shapes`` task, with the inputs built exactly as inference builds them: the v1 conversation
   template, the 144 LDPv2 image tokens spliced where ``<image>`` stood, then ``answer </s>``; the loss is
   the cross-entropy of the answer tokens only;
4. the trained weights are written back to ``out/model.safetensors`` and the sample images plus
   ``questions.json`` to ``demo/samples`` (the held-out split, never trained on).

Default run: about 15 minutes on 2 CPU cores; ``python -m mobilevlm_export.demo.evaluate`` then reports the
held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mobilevlm_export.checkpoint.synthetic import (
    Dims,
    demo_checkpoint_dir,
    mobilevlm_config,
    random_state_dict,
    save_state_dict,
    write_tower_dir,
)
from mobilevlm_export.demo.shapes import HELDOUT_SEED, QUESTIONS, TRAIN_SEED, render
from mobilevlm_export.demo.tokenizer import VOCAB_SIZE, build_tokenizer

DIMS = Dims(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=256, vocab=VOCAB_SIZE, max_positions=512,
            vision_hidden=64, vision_layers=3, vision_heads=2, vision_intermediate=128, image_size=336,
            patch_size=14)
PROJECTOR = "ldpnetv2"
KINDS = tuple(QUESTIONS)
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

STEPS = 3000
IMAGES_PER_STEP = 8  # each image is asked all three questions: 24 sequences a step
LR = 1e-3
WARMUP = 100
VISION_LR_MULT = 0.5
WEIGHT_DECAY = 0.01
SEED = 0


def write_initial_checkpoint(out: Path, d: Dims | None = None, seed: int = SEED) -> None:
    """Tokenizer, config, tower directory and random weights in the MobileVLM V2 layout."""
    d = d or DIMS
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    cfg = mobilevlm_config(d, PROJECTOR, "vision_tower", d.vocab, image_aspect_ratio="pad",
                           mm_use_im_patch_token=False, mm_use_im_start_end=False)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    write_tower_dir(out / "vision_tower", d, None)  # config + preprocessor only: LDPv2 keeps the tower inside
    save_state_dict(random_state_dict(d, PROJECTOR, d.vocab, seed), out, "safetensors")


class Task:
    """Prompt ids per question kind, split at the image, and the answer ids (answer + eos)."""

    def __init__(self, tokenizer) -> None:
        from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX, build_prompt_ids

        self.eos = int(tokenizer.eos_token_id)
        self.tokenizer = tokenizer
        self.pre: list[int] | None = None
        self.post: dict[str, list[int]] = {}
        for kind, question in QUESTIONS.items():
            ids = build_prompt_ids(tokenizer, question)
            k = ids.index(IMAGE_TOKEN_INDEX)
            assert ids.count(IMAGE_TOKEN_INDEX) == 1
            if self.pre is None:
                self.pre = ids[:k]
            assert self.pre == ids[:k], "the text before the image must not depend on the question"
            self.post[kind] = ids[k + 1:]
        self._answers: dict[str, list[int]] = {}

    def answer_ids(self, answer: str) -> list[int]:
        if answer not in self._answers:
            self._answers[answer] = self.tokenizer(answer, add_special_tokens=False).input_ids + [self.eos]
        return self._answers[answer]


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``model.image_features`` without running the tower's layers above ``select_layer`` (they are unused)."""
    tower = model.vision_tower
    layers = tower.encoder.layers
    n = len(layers) + 1 + model.select_layer if model.select_layer < 0 else model.select_layer
    h = tower.pre_layrnorm(tower.embeddings(pixel_values))
    for layer in layers[:n]:
        h = layer(h, None)
    return h[:, 1:] if model.select_feature == "patch" else h


def batch_loss(model, task: Task, pixel_values: torch.Tensor, samples: list, kinds=KINDS):
    """Mean answer-token cross-entropy of every (image, kind) pair, and the per-pair exact-match flags.

    The embeddings are those ``Reference.splice`` builds (text before the image, the image's tokens, the
    question's text after it), made differentiably, with ``answer </s>`` appended. The context up to the end
    of the image does not depend on the question, so it is run once per image and its KV cache is shared by the
    image's questions (the same numbers as running each full sequence; right padding is never seen by the scored
    positions, attention being causal).
    """
    from transformers import DynamicCache

    llm = model.language_model
    emb = llm.get_input_embeddings()
    image = model.projector(image_features(model, pixel_values))  # [B, 144, H]
    pre = emb(torch.tensor(task.pre)).unsqueeze(0).expand(image.shape[0], -1, -1)
    cache = DynamicCache(config=llm.config)
    llm.model(inputs_embeds=torch.cat([pre, image], dim=1), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(len(kinds))  # row order: image-major, then kind
    rows, n_answer = [], []
    for s in samples:
        for kind in kinds:
            answer = task.answer_ids(s.answer(kind))
            rows.append(task.post[kind] + answer)
            n_answer.append(len(answer))
    width = max(len(r) for r in rows)
    post = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    hidden = llm.model(inputs_embeds=emb(post), past_key_values=cache, use_cache=True).last_hidden_state
    idx_b, idx_t, labels = [], [], []
    for i, (r, n) in enumerate(zip(rows, n_answer, strict=True)):
        for j in range(len(r) - n, len(r)):
            idx_b.append(i)
            idx_t.append(j - 1)  # the position whose output predicts token j
            labels.append(r[j])
    logits = llm.lm_head(hidden[torch.tensor(idx_b), torch.tensor(idx_t)])
    labels_t = torch.tensor(labels)
    loss = F.cross_entropy(logits, labels_t)
    miss = (logits.argmax(-1) != labels_t).float()
    correct = torch.zeros(len(rows)).index_add_(0, torch.tensor(idx_b), miss) == 0
    return loss, correct


def pixel_batch(preprocess, samples) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(s.image) for s in samples]))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train(out: Path, steps: int = STEPS, images_per_step: int = IMAGES_PER_STEP, lr: float = LR,
          warmup: int = WARMUP, vision_lr_mult: float = VISION_LR_MULT, log_every: int = 25,
          eval_every: int = 250, n_eval: int = 96) -> None:
    from mobilevlm_export.checkpoint.model import checkpoint_state_dict, load_checkpoint

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    write_initial_checkpoint(out)
    ckpt = load_checkpoint(out)
    model = ckpt.model
    task = Task(ckpt.tokenizer)
    with torch.no_grad():  # the truncated tower must give what the model's own path gives
        pv = pixel_batch(ckpt.preprocess, [render(TRAIN_SEED, 0)])
        assert torch.allclose(image_features(model, pv), model.image_features(pv), atol=1e-5)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; {steps} steps x {images_per_step} images x "
          f"{len(KINDS)} questions", flush=True)

    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():  # (vision?, decayed?): matrices decay, norms/biases/embeddings not
        groups.setdefault((name.startswith("vision_tower."), p.ndim >= 2 and "embed" not in name), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": WEIGHT_DECAY if dec else 0.0,
                              "lr_mult": vision_lr_mult if vis else 1.0} for (vis, dec), ps in sorted(groups.items())],
                            lr=lr, betas=(0.9, 0.98))
    heldout = [render(HELDOUT_SEED, i) for i in range(n_eval)]
    heldout_pv = pixel_batch(ckpt.preprocess, heldout)

    model.train()
    run_loss, run_acc, t_train = 0.0, 0.0, time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup) * g["lr_mult"]
        samples = [render(TRAIN_SEED, step * images_per_step + i) for i in range(images_per_step)]
        loss, correct = batch_loss(model, task, pixel_batch(ckpt.preprocess, samples), samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.item()
        run_acc += correct.float().mean().item()
        if (step + 1) % log_every == 0:
            el = time.perf_counter() - t_train
            print(f"step {step + 1:5d}  loss {run_loss / log_every:.4f}  train acc {run_acc / log_every:.3f}  "
                  f"lr {lr_at(step, steps, lr, warmup):.2e}  {el:.0f}s", flush=True)
            run_loss, run_acc = 0.0, 0.0
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            print(f"  held-out (teacher-forced, {n_eval} images): {quick_eval(model, task, heldout_pv, heldout)}",
                  flush=True)
            model.train()

    model.eval()
    state = {k: v.detach().contiguous() for k, v in checkpoint_state_dict(model).items()}
    save_state_dict(state, out, "safetensors")
    print(f"trained in {time.perf_counter() - t0:.0f}s; wrote {out / 'model.safetensors'}", flush=True)


@torch.no_grad()
def quick_eval(model, task: Task, pixel_values: torch.Tensor, samples: list, chunk: int = 16) -> str:
    model.eval()
    acc = {k: [] for k in KINDS}
    for i in range(0, len(samples), chunk):
        for kind in KINDS:
            _, correct = batch_loss(model, task, pixel_values[i:i + chunk], samples[i:i + chunk], (kind,))
            acc[kind] += correct.tolist()
    return "  ".join(f"{k} {np.mean(v):.3f}" for k, v in acc.items())


SAMPLE_PICKS = 6


def write_samples(dest: Path = SAMPLES_DIR, n: int = SAMPLE_PICKS) -> None:
    """Held-out images with varied shape, colour, count and aspect ratio, and two questions about each."""
    dest.mkdir(parents=True, exist_ok=True)
    picked, seen = [], set()
    for i in range(1000):
        s = render(HELDOUT_SEED, i)
        key = (s.shape, s.color, s.count, s.image.size)
        if any(k[0] == s.shape and k[2] == s.count for k in seen) or any(k[1] == s.color for k in seen) \
                or sum(k[3] == s.image.size for k in seen) >= 2:
            continue
        seen.add(key)
        picked.append((i, s))
        if len(picked) == n:
            break
    entries = []
    for j, (_i, s) in enumerate(picked):
        name = f"{s.count}_{s.color}_{s.shape}.png"
        s.image.save(dest / name, optimize=True)
        for kind in (KINDS[j % 3], KINDS[(j + 1) % 3]):
            entries.append({"image": name, "question": QUESTIONS[kind], "answer": s.answer(kind)})
    (dest / "questions.json").write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {len(picked)} sample images and {len(entries)} questions to {dest}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=demo_checkpoint_dir(), help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps")
    parser.add_argument("--images-per-step", type=int, default=IMAGES_PER_STEP)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--no-samples", action="store_true", help="do not (re)write demo/samples")
    args = parser.parse_args(argv)
    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()  # as every entry point does
    train(args.out, args.steps, args.images_per_step, args.lr)
    if not args.no_samples:
        write_samples()


if __name__ == "__main__":
    main()
