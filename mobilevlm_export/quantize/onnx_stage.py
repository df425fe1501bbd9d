"""The quantization stage of ONNX targets: the exported graphs rewritten in place to standard-form Q/DQ per a
``QuantPlan`` (``quantize_exported``), with the calibration it needs run on the build's own samples
(``calibration_feeds``).

Per graph (the decoder with its lm_head, the image encoder): calibrate the float graph where a part needs it
(w8a8, AWQ, SmoothQuant), apply AWQ or SmoothQuant pre-scales, then rewrite the weight MatMuls
(``qdq_rewrite.quantize_weights``). The graph is held once: loaded, rewritten in place, written back over its
file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from mobilevlm_export.backends.onnx import OnnxRunner, save_model
from mobilevlm_export.graphs.contracts import GraphContract
from mobilevlm_export.memory import release_memory
from mobilevlm_export.quantize.calibrate import calibrate
from mobilevlm_export.quantize.plan import PartPlan, QuantPlan, QuantResult
from mobilevlm_export.quantize.prescale import SMOOTHQUANT_ALPHA, apply_awq_scales, awq_scales, smoothquant_scales
from mobilevlm_export.quantize.qdq_rewrite import quantize_weights
from mobilevlm_export.quantize.select import lm_head_weights
from mobilevlm_export.runtime.generator import VLMGenerator
from mobilevlm_export.runtime.golden_reader import load_golden
from mobilevlm_export.schema import QuantAlgorithm

# the graphs quantized, each with the part its lm_head is (None: none)
GRAPHS = (("decoder", "lm_head"), ("image_encoder", None))
# ``CompileContext.progress``: (description, total) -> advance
Progress = Callable[[str, int], Callable[[], None]]


def quantize_exported(root: Path, record: dict, plan: QuantPlan, progress: Progress) -> QuantResult:
    """Rewrite the exported graphs under ``root`` (``record``: the manifest's graph records) in place per ``plan``;
    int4 blocks of ``plan.default_group_size`` where no int4 part of a graph names one."""
    log: list[str] = []
    reports = {}
    for name, head in GRAPHS:
        body_q = plan.part(name)
        head_q = plan.part(head) if head else None
        body = _scheme(body_q)
        head_scheme = _scheme(head_q) if head_q else None
        if body is None and head_scheme is None:
            continue
        path = root / record[name]["file"]
        block = (body_q.group_size if body == "int4" else None) or (
            head_q.group_size if head_scheme == "int4" else None) or plan.default_group_size
        awq = QuantAlgorithm.AWQ in (body_q.algorithm, head_q.algorithm if head_q else None)
        calib = feeds = None
        if body_q.calibration or (head_q and head_q.calibration):
            feeds = calibration_feeds(root, record, name)
            release_memory()  # the feeds' sessions (image encoder, embeddings) are gone: their memory too
            calib = calibrate(path, feeds)  # ONNX Runtime reads the weights from the file
            release_memory()
        model = onnx.load(str(path))  # the one copy of the float graph, rewritten in place from here on
        if awq:
            scales = awq_scales(model, calib, block_size=block,
                                lm_head=bool(head_q and head_q.algorithm == QuantAlgorithm.AWQ))
            if body_q.algorithm != QuantAlgorithm.AWQ:  # lm_head only
                heads = lm_head_weights(model)
                scales = {a: s for a, s in scales.items() if any(w in heads for w in s.weights)}
            model = apply_awq_scales(model, scales, consume=True)
            gain = [s.error / s.error_rtn for s in scales.values() if s.error_rtn > 0]
            log.append(f"{name}: AWQ pre-scales on {len(scales)} activations (int4 error x{min(gain, default=1):.3f}"
                       f"..{max(gain, default=1):.3f} of round-to-nearest on the calibration rows)")
        if body_q.algorithm == QuantAlgorithm.SMOOTHQUANT:
            scales = smoothquant_scales(model, calib)
            model = apply_awq_scales(model, scales, consume=True)
            calib = calibrate(model, feeds)  # the smoothed activations' ranges
            log.append(f"{name}: SmoothQuant migration (alpha {SMOOTHQUANT_ALPHA}) on {len(scales)} activations")
        select = None if body is not None else (lambda c: c.lm_head)
        result = quantize_weights(model, body or head_scheme, block_size=block, lm_head=head_scheme,
                                  act_amax=calib.amax if calib else None, select=select, consume=True)
        del model
        data = path.with_name(path.name + ".data")
        if data.exists():  # the float weights' external file: replaced by what the quantized graph needs
            data.unlink()
        save_model(result.model, path)
        rep = reports[name] = result.report
        del result
        release_memory()
        log.append(f"{name}: " + ", ".join(f"{n} MatMuls {s}" for s, n in rep.counts.items())
                   + (f" (int4 block {block})" if "int4" in (body, head_scheme) else "")
                   + f"; weights {rep.bytes_before / 1e6:.2f} -> {rep.bytes_after / 1e6:.2f} MB")
        progress(f"Quantized {name}", 1)()
    return QuantResult(tuple(log), reports)


def _scheme(q: PartPlan) -> str | None:
    """The Q/DQ scheme of a part (``quantize_weights``' name), None for a float one."""
    return q.scheme.value if q.quantized else None


def calibration_feeds(root: Path, record: dict, graph: str) -> list[dict]:
    """Inputs of ``graph`` on the build's samples (the golden data's end-to-end pairs under ``root``: images and
    prompts), computed
    with the unquantized exported graphs on ONNX Runtime: pixel values for the image encoder, the spliced prompt
    embeddings (prefill, no past) for the decoder."""
    arrays, e2e = load_golden(root)
    pixels = [arrays[f"e2e/{i}/pixel_values"][None] for i in range(len(e2e))]
    if graph == "image_encoder":
        return [{"pixel_values": p.astype(np.float16)} for p in pixels]
    runners = {n: OnnxRunner(root / r["file"], GraphContract.from_dict(r["contract"]), None)
               for n, r in record.items() if n != "decoder"}
    contract = GraphContract.from_dict(record["decoder"]["contract"])
    pipe = VLMGenerator(runners, decoder=None, eos_id=-1)  # used to embed and splice only
    feeds = []
    for item, px in zip(e2e, pixels, strict=True):
        embeds = pipe.splice(item["prompt_ids"], pipe.image_embeds(px))
        n = embeds.shape[1]
        empty = {t.name: np.zeros(t.shape({"batch": 1, "past": 0}), t.dtype)
                 for t in contract.inputs if t.name.startswith("past_key_values")}
        feeds.append({"inputs_embeds": embeds.astype(np.float16), "attention_mask": np.ones((1, n), np.int32),
                      "position_ids": np.arange(n, dtype=np.int32)[None], **empty})
    return feeds
