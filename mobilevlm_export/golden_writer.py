"""Writing golden data (build side, torch): fixed inputs and the PyTorch reference's outputs, saved beside the
artifacts in the layout ``runtime/golden_reader.py`` reads. Outputs come from the checkpoint's own model
(transformers CLIP and LLaMA, fp32), never from the split graphs, so a mistake in the split shows up as a parity
failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobilevlm_export.checkpoint.model import LoadedCheckpoint
from mobilevlm_export.checkpoint.reference import Reference
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.graphs.contracts import kv_names
from mobilevlm_export.manifest import E2E_JSON, GOLDEN_NPZ
from mobilevlm_export.runtime.preprocess import load_image
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX, build_prompt_ids
from mobilevlm_export.schema import Where, parse_table, read_json

# the image graphs' golden case of a dynamic-batch build runs this many images at once (static builds: one)
DYNAMIC_IMAGE_BATCH = 2


@dataclass(frozen=True)
class Pair:
    image: Path
    question: str
    source: str = "the question"  # where the question came from, for messages: "DIR/questions.json: key '[0].question'"


@dataclass(frozen=True)
class _Entry:
    """An entry of ``questions.json`` (other keys, such as ``answer``, are ignored)."""

    image: str  # a file name relative to the samples folder
    question: str


def load_pairs(folder: Path) -> list[Pair]:
    """(image, question) pairs from ``folder/questions.json``: ``[{"image": "a.png", "question": "..."}]``, each image
    a readable image file (opened here, before any model is loaded). ``UserError`` names the file and entry."""
    folder = Path(folder)
    qfile = folder / "questions.json"
    if not qfile.is_file():
        raise UserError(f"--samples {folder}: no questions.json (a list of {{\"image\", \"question\"}})")
    items = read_json(qfile)
    if not isinstance(items, list) or not items:
        raise UserError(f"{qfile}: expected a non-empty list of {{\"image\", \"question\"}}")
    bad = Where(str(qfile)).bad
    pairs = []
    for i, item in enumerate(items):
        entry = parse_table(_Entry, item, f"[{i}]", bad, allow_unknown=True)
        load_image(folder / entry.image, named=f"{qfile}: key '[{i}].image' names")
        pairs.append(Pair(folder / entry.image, entry.question, f"{qfile}: key '[{i}].question'"))
    return pairs


def demo_pairs() -> list[Pair]:
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    return load_pairs(demo_checkpoint_dir().parent / "samples")


@torch.inference_mode()
def make_golden(ckpt: LoadedCheckpoint, pairs: list[Pair], fused_image_encoder: bool,
                max_new_tokens: int, kv: str = "dynamic",
                max_batch: int = DYNAMIC_IMAGE_BATCH) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Reference inputs/outputs for every graph, and reference greedy tokens for every pair.

    ``max_batch``: the build's largest batch (the image case runs at most that many images: an engine's profile
    takes no more). ``kv="static"`` (ExecuTorch): batch-1 image case, and decoder cases ``step00`` (prefill of the
    first pair's prompt) then ``step01``... (one reference token each, teacher-forced) that run in name order on one
    cache, so logits are compared at every step."""
    ref = Reference(ckpt)
    model = ckpt.model
    arrays: dict[str, np.ndarray] = {}
    pixels = [ckpt.preprocess(load_image(p.image)) for p in pairs]

    def put(graph: str, case: str, ins: dict, outs: dict) -> None:
        for k, v in ins.items():
            arrays[f"{graph}/{case}/in/{k}"] = np.asarray(v)
        for k, v in outs.items():
            arrays[f"{graph}/{case}/out/{k}"] = np.asarray(v, dtype=np.float32)

    images = 1 if kv == "static" else min(DYNAMIC_IMAGE_BATCH, max_batch)
    batch = torch.from_numpy(np.stack(pixels[:images]))
    feats = model.image_features(batch)
    embeds = model.projector(feats)
    if fused_image_encoder:
        put("image_encoder", "batch", {"pixel_values": batch.numpy()}, {"image_embeds": embeds.numpy()})
    else:
        put("vision_encoder", "batch", {"pixel_values": batch.numpy()}, {"image_features": feats.numpy()})
        put("projector", "batch", {"image_features": feats.numpy()}, {"image_embeds": embeds.numpy()})

    ids = build_prompt_ids(ckpt.tokenizer, pairs[0].question)
    text_ids = torch.tensor([[t for t in ids if t != IMAGE_TOKEN_INDEX]])
    put("embed_tokens", "prompt", {"input_ids": text_ids.numpy()}, {"inputs_embeds": model.embed_tokens(text_ids)})

    e2e = []
    params = SamplingParams(max_new_tokens=max_new_tokens)
    # an image's embeddings once, however many questions ask about it (the demo's 10 pairs show 5 images); a batch
    # of one image is the same computation as its own pass, so that image's are the batch's
    seen: dict[Path, torch.Tensor] = {pairs[0].image.resolve(): embeds} if images == 1 else {}
    for i, (pair, px) in enumerate(zip(pairs, pixels, strict=True)):
        pids = build_prompt_ids(ckpt.tokenizer, pair.question)
        key = pair.image.resolve()
        if key not in seen:
            seen[key] = ref.image_embeds(px)
        out = ref.generate_from_embeds(ref.splice(pids, seen[key]), params)
        arrays[f"e2e/{i}/pixel_values"] = px
        e2e.append({"image": pair.image.name, "question": pair.question, "prompt_ids": pids, "reference_ids": out})
    seq = ref.splice(ids, embeds[:1])
    if kv == "static":
        _static_decoder_cases(model, seq, e2e[0]["reference_ids"], put)
    else:
        _dynamic_decoder_cases(model, seq, put)
    return arrays, e2e


def _static_decoder_cases(model, seq: torch.Tensor, tokens: list[int], put) -> None:
    llm = model.language_model
    n = seq.shape[1]
    pre = llm(inputs_embeds=seq, use_cache=True)
    put("decoder", "step00", {"inputs_embeds": seq, "input_pos": np.arange(n)}, {"logits": pre.logits})
    cache = pre.past_key_values
    for k, token in enumerate(tokens[:-1], start=1):
        step_in = model.embed_tokens(torch.tensor([[token]]))
        out = llm(inputs_embeds=step_in, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        put("decoder", f"step{k:02d}", {"inputs_embeds": step_in, "input_pos": np.array([n + k - 1])},
            {"logits": out.logits})


def _dynamic_decoder_cases(model, seq: torch.Tensor, put) -> None:
    llm = model.language_model
    n = seq.shape[1]
    pre = llm(inputs_embeds=seq, use_cache=True)
    layers = llm.config.num_hidden_layers
    kv = {name: t for i in range(layers)
          for name, t in zip(kv_names(i)[2:], (pre.past_key_values.layers[i].keys,
                                               pre.past_key_values.layers[i].values), strict=True)}
    heads_shape = kv[kv_names(0)[2]].shape
    empty = np.zeros((1, heads_shape[1], 0, heads_shape[3]), np.float32)
    put("decoder", "prefill",
        {"inputs_embeds": seq, "attention_mask": np.ones((1, n), np.int64), "position_ids": np.arange(n)[None],
         **{name: empty for i in range(layers) for name in kv_names(i)[:2]}},
        {"logits": pre.logits, **kv})
    token = int(pre.logits[0, -1].argmax())
    step_in = model.embed_tokens(torch.tensor([[token]]))
    dec = llm(inputs_embeds=step_in, past_key_values=pre.past_key_values, use_cache=True)
    put("decoder", "decode",
        {"inputs_embeds": step_in, "attention_mask": np.ones((1, n + 1), np.int64),
         "position_ids": np.array([[n]]), **{kv_names(i)[j]: kv[kv_names(i)[j + 2]] for i in range(layers)
                                            for j in (0, 1)}},
        {"logits": dec.logits, **{name: t for i in range(layers) for name, t in zip(
            kv_names(i)[2:], (dec.past_key_values.layers[i].keys, dec.past_key_values.layers[i].values),
            strict=True)}})


def save_golden(root: Path, arrays: dict[str, np.ndarray], e2e: list[dict]) -> None:
    (root / "golden").mkdir(parents=True, exist_ok=True)
    _save_npz(root / GOLDEN_NPZ, arrays)
    (root / E2E_JSON).write_text(json.dumps(e2e, indent=1) + "\n")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` np.load reads, written with fixed zip timestamps so equal arrays give equal bytes
    (np.savez stamps the current time)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
