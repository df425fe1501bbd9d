"""Peers for the MobileLLaMA-1.4B decoder benchmark: ExecuTorch's stock LLM export flow and PyTorch eager.

Our own ExecuTorch export of the decoder is measured elsewhere; this module measures what it is compared with,
on the same model shape and random weights (speed and size do not depend on the weights' values):

* ``export_llm``: ExecuTorch's ``python -m executorch.extension.llm.export.export_llm`` (the ``llama2`` model class
  with a params.json of MobileLLaMA's shape, the custom SDPA-with-KV-cache op, XNNPACK, ``8da4w`` linears), run in a
  subprocess so that its export time and peak RSS are its own;
* ``measure_llama_pte``: prefill and greedy decode speed of such a ``.pte`` in the ExecuTorch runtime;
* ``measure_eager``: the same for a transformers ``LlamaForCausalLM`` in fp32 with its KV cache.

Run ``python benchmarks/peers.py`` for the full size (minutes, ~6 GB RSS for the export) or with ``--small`` for a
quick check on a tiny shape; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EXPORT_LLM_MODULE = "executorch.extension.llm.export.export_llm"


@dataclass(frozen=True)
class LlamaShape:
    """A LLaMA decoder's shape: what the params.json and the eager config are made of."""

    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    context: int = 2048


MOBILELLAMA_1_4B = LlamaShape(dim=2048, n_layers=24, n_heads=16, hidden_dim=5632, vocab_size=32000)
SMALL = LlamaShape(dim=128, n_layers=2, n_heads=4, hidden_dim=352, vocab_size=512, context=512)


def write_params(path: Path, shape: LlamaShape = MOBILELLAMA_1_4B) -> Path:
    """Write the params.json that ExecuTorch's llama ``ModelArgs`` reads for ``shape``; returns its path.

    ``hidden_dim`` is given explicitly (the FFN size), so neither ``multiple_of`` nor ``ffn_dim_multiplier`` are
    used to derive it; ``n_kv_heads == n_heads`` (no GQA), head dim ``dim // n_heads``.
    """
    params = {
        "dim": shape.dim,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_heads,
        "hidden_dim": shape.hidden_dim,
        "vocab_size": shape.vocab_size,
        "norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params, indent=2) + "\n")
    return path


def export_llm_command(params: Path, out_dir: Path, name: str, group_size: int, max_seq_len: int,
                       qmode: str | None, embedding_quantize: str | None = None) -> list[str]:
    """The ``export_llm`` command line (hydra-style overrides) for a random-weight llama2-class model.

    ``max_context_length`` (the KV cache length) is set to ``max_seq_len``; dynamic shape is on (the flow's
    default, spelled out), so ``forward`` takes 1 to ``max_seq_len - 1`` tokens per call. ``qmode=None`` exports
    fp32 linears; ``embedding_quantize`` (e.g. ``"8,0"``) quantizes the embedding, left fp32 when None.
    """
    cmd = [sys.executable, "-m", EXPORT_LLM_MODULE,
           "base.model_class=llama2", f"base.params={Path(params).resolve()}",
           "model.use_kv_cache=True", "model.use_sdpa_with_kv_cache=True", "model.enable_dynamic_shape=True",
           "model.dtype_override=fp32",
           "backend.xnnpack.enabled=True", "backend.xnnpack.extended_ops=True",
           f"export.max_seq_length={max_seq_len}", f"export.max_context_length={max_seq_len}",
           f"export.output_dir={Path(out_dir).resolve()}", f"export.output_name={name}"]
    if qmode:
        cmd += [f"quantization.qmode={qmode}", f"quantization.group_size={group_size}"]
    if embedding_quantize:
        cmd.append(f"quantization.embedding_quantize='{embedding_quantize}'")
    return cmd


def run_measured(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with stdout and stderr to ``log``; returns (exit code, wall seconds, the child's peak RSS in MB).

    The peak RSS is the child's own (``os.wait4``), not the largest of every child this process has waited for.
    """
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def export_llm(out_dir: Path, group_size: int = 32, max_seq_len: int = 512, qmode: str = "8da4w", *,
               shape: LlamaShape = MOBILELLAMA_1_4B, embedding_quantize: str | None = None) -> dict[str, Any]:
    """Export ``shape`` with ExecuTorch's stock LLM flow into ``out_dir/llama_<qmode>_g<group_size>.pte``.

    Runs in a subprocess (cwd ``out_dir``, where hydra leaves its ``outputs/`` logs) so its time and memory are
    measured apart from this process. Returns the .pte path, its size, the export's wall seconds, its peak RSS
    and the command; raises with the log's tail when the export fails.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"llama_{qmode or 'fp32'}_g{group_size}" + (f"_emb{embedding_quantize.replace(',', 'x')}"
                                                      if embedding_quantize else "")
    params = write_params(out_dir / f"params_{shape.dim}x{shape.n_layers}.json", shape)
    cmd = export_llm_command(params, out_dir, name, group_size, max_seq_len, qmode, embedding_quantize)
    log = out_dir / f"{name}.log"
    pte = out_dir / f"{name}.pte"
    pte.unlink(missing_ok=True)
    load_before = load_average()
    rc, seconds, rss_mb = run_measured(cmd, out_dir, log)
    if rc != 0 or not pte.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"export_llm failed (exit {rc}, {pte} {'exists' if pte.exists() else 'missing'}):\n{tail}")
    return {"pte": str(pte), "bytes": pte.stat().st_size, "export_seconds": round(seconds, 1),
            "peak_rss_mb": round(rss_mb), "load_avg_before": load_before, "load_avg_after": load_average(),
            "log": str(log),
            "command": shlex.join(cmd)}


def load_average() -> list[float]:
    """The 1/5/15-minute load averages: a timing taken while other processes compete for the cores shows a 1-minute
    load above the benchmark's own thread count at its end."""
    return [round(x, 2) for x in os.getloadavg()]


def _median(xs: list[float], digits: int = 2) -> float:
    return round(statistics.median(xs), digits)


def _summarize(runs: list[dict[str, float]], prompt_len: int, decode_tokens: int) -> dict[str, Any]:
    """Medians over repeats: prefill tok/s, decode tok/s (steps / total decode time), first-token latency."""
    return {
        "prefill_tok_s": _median([prompt_len / r["prefill_s"] for r in runs], 1),
        "decode_tok_s": _median([decode_tokens / r["decode_s"] for r in runs]),
        "first_token_ms": _median([1000 * r["prefill_s"] for r in runs], 1),
        "runs": [{k: round(v, 4) for k, v in r.items()} for r in runs],
    }


def _timed_generation(prefill: Callable[[Any], Any], step: Callable[[Any, int], Any], prompt: Any, prompt_len: int,
                      decode_tokens: int) -> dict[str, float]:
    """One prefill (to the first token's argmax) and ``decode_tokens`` greedy steps; their wall times."""
    t0 = time.perf_counter()
    token = prefill(prompt)
    t1 = time.perf_counter()
    for i in range(decode_tokens):
        token = step(token, prompt_len + i)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1}


def last_argmax(logits: Any) -> Any:
    """The greedy next token, [1, 1] int64, from logits shaped [1, V] or [1, T, V]."""
    last = logits[:, -1, :] if logits.dim() == 3 else logits
    return last.argmax(dim=-1).reshape(1, 1)


# ExecuTorch's ScalarType codes (the same numbering as c10's) for the dtypes an LLM program's inputs/outputs use.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                 11: "bool", 15: "bfloat16"}


def _tensor_info(info: Any) -> dict[str, Any]:
    """Sizes (the upper bounds, for a dynamic dim) and dtype of one input/output of a method."""
    code = int(info.dtype())
    return {"sizes": list(info.sizes()), "dtype": _SCALAR_TYPES.get(code, f"ScalarType({code})")}


def read_pte_metadata(program: Any) -> dict[str, Any]:
    """The constant methods export_llm writes (``enable_dynamic_shape``, ``get_max_seq_len``, ...) that exist."""
    keys = ["enable_dynamic_shape", "use_kv_cache", "use_sdpa_with_kv_cache", "get_max_seq_len",
            "get_max_context_len", "get_vocab_size", "get_n_layers"]
    meta: dict[str, Any] = {}
    for key in keys:
        if key in program.method_names:
            value = program.load_method(key).execute([])[0]
            meta[key] = value.item() if hasattr(value, "item") else value
    return meta


def measure_llama_pte(path: Path, prompt_len: int = 64, decode_tokens: int = 64, threads: int = 2,
                      repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Prefill and greedy-decode speed of an export_llm ``.pte`` (``forward(tokens [1, T] int64, input_pos [1]
    int64) -> logits``) in the ExecuTorch runtime with ``threads`` threads.

    The prompt is ``prompt_len`` random tokens, fed in one call when the program has dynamic shape and otherwise
    in chunks of its static token count; then ``decode_tokens`` single-token steps feed back the argmax. One
    untimed warm-up run, then ``repeats`` timed ones (each restarts at position 0, overwriting the KV cache).
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels for the runtime)
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime, Verification

    _unsafe_reset_threadpool(threads)
    t0 = time.perf_counter()
    program = Runtime.get().load_program(Path(path), verification=Verification.Minimal)
    meta = read_pte_metadata(program)
    method = program.load_method("forward")
    load_s = time.perf_counter() - t0
    mm = method.metadata
    inputs = [_tensor_info(mm.input_tensor_meta(i)) for i in range(mm.num_inputs())]
    outputs = [_tensor_info(mm.output_tensor_meta(i)) for i in range(mm.num_outputs())]

    dynamic = bool(meta.get("enable_dynamic_shape", False))
    chunk = prompt_len if dynamic else inputs[0]["sizes"][1]
    max_seq = meta.get("get_max_seq_len")
    if dynamic and max_seq is not None and prompt_len > max_seq - 1:
        raise ValueError(f"prompt_len {prompt_len} > {max_seq - 1}, the most tokens this program takes per call")
    if prompt_len % chunk:
        raise ValueError(f"static program takes {chunk} tokens per call; prompt_len {prompt_len} is not a multiple")
    context = meta.get("get_max_context_len")
    if context is not None and prompt_len + decode_tokens > context:
        raise ValueError(f"prompt_len + decode_tokens = {prompt_len + decode_tokens} > KV cache length {context}")

    vocab = int(meta.get("get_vocab_size", 32000))
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prompt_len), dtype=torch.int64, generator=gen)

    def forward(tokens: torch.Tensor, pos: int) -> torch.Tensor:
        return method.execute([tokens, torch.tensor([pos], dtype=torch.int64)])[0]

    def prefill(tokens: torch.Tensor) -> torch.Tensor:
        for start in range(0, prompt_len, chunk):
            logits = forward(tokens[:, start:start + chunk].contiguous(), start)
        return last_argmax(logits)

    def step(token: torch.Tensor, pos: int) -> torch.Tensor:
        return last_argmax(forward(token, pos))

    _timed_generation(prefill, step, prompt, prompt_len, decode_tokens)
    load_before = load_average()
    runs = [_timed_generation(prefill, step, prompt, prompt_len, decode_tokens) for _ in range(repeats)]
    load_after = load_average()
    result = {
        "pte": str(path), "threads": threads, "prompt_len": prompt_len, "decode_tokens": decode_tokens,
        "repeats": repeats, "load_s": round(load_s, 2), "load_avg_before": load_before, "load_avg_after": load_after,
        "prefill_feed": "one call" if dynamic else f"{prompt_len // chunk} calls of {chunk} tokens",
        "forward_inputs": inputs, "forward_outputs": outputs, "metadata": meta,
    }
    result.update(_summarize(runs, prompt_len, decode_tokens))
    return result


def build_eager(shape: LlamaShape = MOBILELLAMA_1_4B, seed: int = 0) -> Any:
    """A random-weight fp32 transformers ``LlamaForCausalLM`` of ``shape`` (untied embeddings), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.dim, intermediate_size=shape.hidden_dim,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_heads,
        max_position_embeddings=shape.context, rms_norm_eps=shape.norm_eps, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta}, dtype=torch.float32)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def measure_eager(prompt_len: int = 64, decode_tokens: int = 32, threads: int = 2, repeats: int = 3, *,
                  shape: LlamaShape = MOBILELLAMA_1_4B, seed: int = 0) -> dict[str, Any]:
    """Prefill and greedy-decode speed of PyTorch eager (fp32, transformers' KV cache, ``torch.inference_mode``)
    with ``torch.set_num_threads(threads)``; the same metrics as :func:`measure_llama_pte`.

    Prefill computes the last position's logits only (``logits_to_keep=1``), as the export_llm program does.
    """
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = build_eager(shape, seed)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, shape.vocab_size, (1, prompt_len), dtype=torch.int64, generator=gen)
    cache: dict[str, Any] = {}

    def prefill(tokens: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=tokens, use_cache=True, logits_to_keep=1)
        cache["kv"] = out.past_key_values
        return last_argmax(out.logits)

    def step(token: torch.Tensor, pos: int) -> torch.Tensor:
        out = model(input_ids=token, past_key_values=cache["kv"], use_cache=True)
        cache["kv"] = out.past_key_values
        return last_argmax(out.logits)

    with torch.inference_mode():
        _timed_generation(prefill, step, prompt, prompt_len, decode_tokens)
        load_before = load_average()
        runs = [_timed_generation(prefill, step, prompt, prompt_len, decode_tokens) for _ in range(repeats)]
        load_after = load_average()
    params = sum(p.numel() for p in model.parameters())
    result = {"threads": threads, "prompt_len": prompt_len, "decode_tokens": decode_tokens, "repeats": repeats,
              "dtype": "float32", "params": params, "build_s": round(build_s, 1),
              "attn_implementation": model.config._attn_implementation,
              "load_avg_before": load_before, "load_avg_after": load_after}
    result.update(_summarize(runs, prompt_len, decode_tokens))
    return result


def versions() -> dict[str, str]:
    """Versions of the packages whose code is being measured."""
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "executorch", "torchao", "transformers")}


def main(argv: list[str] | None = None) -> None:
    """Export with export_llm, measure its .pte, measure eager; print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny shape (dim 128, 2 layers, vocab 512): a quick check")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the .pte goes (default /tmp/peer[-small])")
    ap.add_argument("--pte", type=Path, default=None, help="measure this export_llm .pte instead of exporting")
    ap.add_argument("--qmode", default="8da4w")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--embedding-quantize", default=None, help="e.g. '8,0'; default: the flow's fp32 embedding")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--eager-decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-eager", action="store_true")
    args = ap.parse_args(argv)

    shape = SMALL if args.small else MOBILELLAMA_1_4B
    out_dir = args.out_dir or Path("/tmp/peer-small" if args.small else "/tmp/peer")
    report: dict[str, Any] = {"shape": asdict(shape), "versions": versions(), "cpu_count": os.cpu_count()}
    if args.pte is None:
        exported = export_llm(out_dir, args.group_size, args.max_seq_len, args.qmode, shape=shape,
                              embedding_quantize=args.embedding_quantize)
        report["export_llm"] = exported
        pte = Path(exported["pte"])
    else:
        pte = args.pte
        report["export_llm"] = {"pte": str(pte), "bytes": pte.stat().st_size}
    report["export_llm_pte"] = measure_llama_pte(pte, args.prompt_len, args.decode_tokens, args.threads,
                                                 args.repeats)
    if not args.skip_eager:
        report["eager_fp32"] = measure_eager(args.prompt_len, args.eager_decode_tokens, args.threads, args.repeats,
                                             shape=shape)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
