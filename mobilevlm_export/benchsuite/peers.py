"""What our builds are measured against, each seen the way ``bench.measure`` sees a built directory.

* PyTorch eager fp32, the reference (``EagerModel``): the checkpoint's own model (``checkpoint.reference``), vision
  tower + projector + transformers' LLaMA with its KV cache, ``torch.inference_mode``; prefill computes the last
  position's logits only.
* ExecuTorch's own LLM export flow (``export_llm``): ``python -m executorch.extension.llm.export.export_llm`` (the
  ``llama2`` model class with a params.json of the checkpoint's decoder shape, random weights, the custom
  SDPA-with-KV-cache op, XNNPACK, ``8da4w`` linears at a group size, fp32 embedding), run in a subprocess so its
  export time and peak RSS are its own; ``ExportLlmProgram`` runs the ``.pte`` (``forward(tokens, input_pos)``).
  Decoder only.
* ONNX Runtime's own int4 path (``ort_int4``): ``MatMulNBitsQuantizer`` (blocks of 32, symmetric, int8
  activations: ``accuracy_level`` 4) applied to the decoder graph of our fp32 ONNX build; the result is a built
  directory like ours (the other graphs linked from the fp32 build), so our runtime runs and verifies it.

Speed and size do not depend on the weights' values; accuracy does, so it is measured on the trained demo
checkpoint (``suite``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mobilevlm_export.backends import Backend
from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX

EXPORT_LLM_MODULE = "executorch.extension.llm.export.export_llm"
EXPORT_LLM_MAX_SEQ = 512  # the KV cache export_llm's programs are built with (our ExecuTorch recipes' max_cache)
ORT_INT4 = {"bits": 4, "block_size": 32, "is_symmetric": True, "accuracy_level": 4}


@dataclass(frozen=True)
class LlamaShape:
    """A LLaMA decoder's shape: what export_llm's params.json is made of."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    context: int = 2048

    @classmethod
    def from_config(cls, config: dict) -> LlamaShape:
        """The decoder shape of a MobileVLM config.json."""
        heads = config["num_attention_heads"]
        return cls(dim=config["hidden_size"], n_layers=config["num_hidden_layers"], n_heads=heads,
                   n_kv_heads=config.get("num_key_value_heads") or heads, hidden_dim=config["intermediate_size"],
                   vocab_size=config["vocab_size"], norm_eps=config.get("rms_norm_eps", 1e-6),
                   rope_theta=config.get("rope_theta", 10000.0), context=config.get("max_position_embeddings", 2048))


def write_params(path: Path, shape: LlamaShape) -> Path:
    """The params.json ExecuTorch's llama ``ModelArgs`` reads for ``shape``. ``hidden_dim`` is given explicitly
    (the FFN width), so neither ``multiple_of`` nor ``ffn_dim_multiplier`` derive it."""
    params = {"dim": shape.dim, "n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
              "hidden_dim": shape.hidden_dim, "vocab_size": shape.vocab_size, "norm_eps": shape.norm_eps,
              "rope_theta": shape.rope_theta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params, indent=2) + "\n")
    return path


def export_llm_command(params: Path, out_dir: Path, name: str, group_size: int, max_seq_len: int,
                       qmode: str | None = "8da4w") -> list[str]:
    """The ``export_llm`` command line (hydra-style overrides) for a random-weight llama2-class model: KV cache
    (``max_context_length`` = ``max_seq_len``), ExecuTorch's SDPA-with-KV-cache op, dynamic shape (``forward``
    takes 1 to ``max_seq_len - 1`` tokens per call), XNNPACK with its extended ops, ``qmode`` linears in groups of
    ``group_size`` (None: fp32), the embedding left fp32 (the flow's default)."""
    cmd = [sys.executable, "-m", EXPORT_LLM_MODULE,
           "base.model_class=llama2", f"base.params={Path(params).resolve()}",
           "model.use_kv_cache=True", "model.use_sdpa_with_kv_cache=True", "model.enable_dynamic_shape=True",
           "model.dtype_override=fp32", "backend.xnnpack.enabled=True", "backend.xnnpack.extended_ops=True",
           f"export.max_seq_length={max_seq_len}", f"export.max_context_length={max_seq_len}",
           f"export.output_dir={Path(out_dir).resolve()}", f"export.output_name={name}"]
    if qmode:
        cmd += [f"quantization.qmode={qmode}", f"quantization.group_size={group_size}"]
    return cmd


def run_measured(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[int, float, float]:
    """Run ``cmd`` (in ``env``, None: this process's) with stdout and stderr to ``log``: (exit code, wall seconds,
    the child's own peak RSS in MB, from ``os.wait4``)."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024


def export_llm(out_dir: Path, shape: LlamaShape, group_size: int, max_seq_len: int = EXPORT_LLM_MAX_SEQ,
               qmode: str = "8da4w") -> dict[str, Any]:
    """Export ``shape`` with ExecuTorch's stock LLM flow into ``out_dir/llama_<qmode>_g<group_size>.pte`` (cwd
    ``out_dir``, where hydra leaves its logs). The record: the .pte (relative to ``out_dir``), its bytes, the
    export's wall seconds and peak RSS, the command. ``RuntimeError`` with the log's tail when it fails."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"llama_{qmode}_g{group_size}"
    params = write_params(out_dir / "params.json", shape)
    cmd = export_llm_command(params, out_dir, name, group_size, max_seq_len, qmode)
    log, pte = out_dir / f"{name}.log", out_dir / f"{name}.pte"
    rc, seconds, rss_mb = run_measured(cmd, out_dir, log)
    if rc != 0 or not pte.is_file():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"export_llm failed (exit {rc}, {pte.name} {'exists' if pte.exists() else 'missing'}):"
                           f"\n{tail}")
    return {"pte": pte.name, "bytes": pte.stat().st_size, "wall_s": round(seconds, 1), "peak_rss_mb": round(rss_mb),
            "rc": rc, "command": shlex.join(cmd), "group_size": group_size, "qmode": qmode,
            "max_seq_len": max_seq_len}


PTE_METADATA = ("enable_dynamic_shape", "use_kv_cache", "use_sdpa_with_kv_cache", "get_max_seq_len",
                "get_max_context_len", "get_vocab_size", "get_n_layers")


def read_pte_metadata(program: Any) -> dict[str, Any]:
    """The constant methods export_llm writes (``enable_dynamic_shape``, ``get_max_seq_len``, ...) that exist."""
    meta: dict[str, Any] = {}
    for key in PTE_METADATA:
        if key in program.method_names:
            value = program.load_method(key).execute([])[0]
            meta[key] = value.item() if hasattr(value, "item") else value
    return meta


def last_logits(logits: Any) -> Any:
    """The last position's logits, 1-D, from logits shaped [1, V] or [1, T, V]."""
    return logits[0, -1] if logits.dim() == 3 else logits[0]


class ExportLlmProgram:
    """``bench.measure``'s view of an export_llm ``.pte``: ``manifest`` holds the dims ``bench.workload`` reads
    (text-only workloads only: the program has no vision encoder)."""

    def __init__(self, pte: Path, dims: dict) -> None:
        self.pte = Path(pte)
        self.manifest = {"model": {"dims": dims}}
        self._loaded: dict | None = None

    def bench_notes(self) -> list[str]:
        return []  # a peer's program has no target of ours, so no target notes

    def runners(self, threads: int | None = None) -> dict:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels for the runtime)
        from executorch.runtime import Runtime, Verification

        from mobilevlm_export.backends.executorch import set_threads

        set_threads(threads)
        if self._loaded is None:
            program = Runtime.get().load_program(self.pte, verification=Verification.Minimal)
            self._loaded = {"meta": read_pte_metadata(program), "forward": program.load_method("forward")}
        return self._loaded

    def generator(self, runners: dict) -> ExportLlmGenerator:
        return ExportLlmGenerator(runners["forward"], runners["meta"])


class ExportLlmGenerator:
    """Prefill and greedy decode through export_llm's ``forward(tokens [1, T] int64, input_pos [1] int64)``, the
    argmax on the host, as ``runtime.generator.VLMGenerator`` does for ours."""

    def __init__(self, method: Any, meta: dict) -> None:
        if not meta.get("enable_dynamic_shape", False):
            raise UserError("export_llm program without dynamic shape: the suite feeds the prompt in one call")
        self.method, self.meta, self.pos = method, meta, 0
        capacity = int(meta.get("get_max_context_len", EXPORT_LLM_MAX_SEQ))
        self.decoder = SimpleNamespace(capacity=capacity, max_prompt=capacity)
        self.backend = Backend.EXECUTORCH

    def _forward(self, tokens: list[int], pos: int) -> Any:
        import torch

        return last_logits(self.method.execute([torch.tensor([tokens], dtype=torch.int64),
                                                torch.tensor([pos], dtype=torch.int64)])[0])

    def threads_used(self) -> int:
        from mobilevlm_export.backends.executorch import threadpool_size

        return threadpool_size()

    def image_embeds(self, pixel_values: Any) -> None:
        return None

    def prefill(self, prompt_ids: list[int], image_embeds: Any) -> Any:
        if IMAGE_TOKEN_INDEX in prompt_ids:
            raise UserError("export_llm's program is a decoder only: text-only prompts")
        self.pos = len(prompt_ids)
        return self._forward(prompt_ids, 0)

    def step(self, token: int) -> Any:
        logits = self._forward([token], self.pos)
        self.pos += 1
        return logits


class EagerModel:
    """``bench.measure``'s view of PyTorch eager fp32 on a checkpoint: the reference model (fp32), loaded once."""

    def __init__(self, ckpt: Path) -> None:
        from mobilevlm_export.checkpoint.model import load_checkpoint
        from mobilevlm_export.checkpoint.records import model_dims

        self.loaded = load_checkpoint(ckpt)
        self.dims = model_dims(self.loaded)
        self.manifest = {"model": {"dims": dict(self.dims.__dict__)}}

    def bench_notes(self) -> list[str]:
        return []  # a peer's program has no target of ours, so no target notes

    def runners(self, threads: int | None = None) -> dict:
        import torch

        if threads:
            torch.set_num_threads(threads)
        return {}

    def generator(self, runners: dict) -> EagerGenerator:
        return EagerGenerator(self.loaded, self.dims.max_context)


class EagerGenerator:
    """The reference's stages as ``VLMGenerator`` has them: vision tower + projector, embed + splice + prefill (the
    last position's logits only), one decode step with transformers' KV cache."""

    def __init__(self, loaded: Any, capacity: int) -> None:
        from mobilevlm_export.checkpoint.reference import Reference

        self.ref = Reference(loaded)
        self.llm = loaded.model.language_model
        self.decoder = SimpleNamespace(capacity=capacity, max_prompt=capacity)
        self.backend = Backend.PYTORCH
        self.past = None

    def threads_used(self) -> int:
        import torch

        return torch.get_num_threads()

    def image_embeds(self, pixel_values: Any) -> Any:
        return self.ref.image_embeds(pixel_values)

    def prefill(self, prompt_ids: list[int], image_embeds: Any) -> Any:
        import torch

        with torch.inference_mode():
            out = self.llm(inputs_embeds=self.ref.splice(prompt_ids, image_embeds), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[0, -1]

    def step(self, token: int) -> Any:
        import torch

        with torch.inference_mode():
            emb = self.ref.model.embed_tokens(torch.tensor([[token]]))
            out = self.llm(inputs_embeds=emb, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1]


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a file the runtime only reads (saves the fp32 graphs' disk); the manifest, which
    ``update_manifest`` rewrites in place, is copied."""
    if Path(src).name != "manifest.json":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def ort_int4(fp32_dir: Path, out: Path, config: dict = ORT_INT4) -> dict:
    """ONNX Runtime's own int4 weight-only path on our fp32 ONNX build: ``MatMulNBitsQuantizer`` (``config``) on
    ``fp32_dir``'s decoder graph, written to ``out`` with everything else of ``fp32_dir``; the manifest's artifacts
    re-recorded. Returns what was quantized: MatMul nodes before, MatMulNBits nodes after, the decoder's bytes."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from mobilevlm_export.backends.onnx import save_model
    from mobilevlm_export.manifest import read_manifest, update_manifest

    fp32_dir, out = Path(fp32_dir), Path(out)
    rel = read_manifest(fp32_dir)["graphs"]["decoder"]["file"]
    shutil.copytree(fp32_dir, out, copy_function=_link_or_copy)
    for p in (out / rel, out / (rel + ".data")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    model = onnx.load(str(fp32_dir / rel))
    before = sum(n.op_type == "MatMul" for n in model.graph.node)
    quantizer = MatMulNBitsQuantizer(model, **config)
    quantizer.process()
    model = quantizer.model.model
    del quantizer
    after = {op: sum(n.op_type == op for n in model.graph.node) for op in ("MatMulNBits", "MatMul")}
    save_model(model, out / rel)
    del model
    update_manifest(out)
    return {"config": dict(config), "matmul_before": before, "matmulnbits_after": after["MatMulNBits"],
            "matmul_left": after["MatMul"], "quantize_s": round(time.perf_counter() - t0, 1),
            "decoder_bytes": sum(p.stat().st_size for p in (out / rel, out / (rel + ".data")) if p.is_file()),
            "from": str(fp32_dir)}
