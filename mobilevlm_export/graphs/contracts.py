"""Graph I/O contracts as data: names, dtypes, dims (ints, or symbols for dynamic axes) and each symbol's range.

Export, verification, benchmarks and engine builders all read these. Symbols: ``batch``, ``seq`` (new tokens),
``past`` (cached tokens), ``past+seq``, ``max_cache`` (static KV length, fixed per build). Each dynamic symbol of a
graph has a ``DimRange`` (min/opt/max): ExecuTorch's ``torch.export.Dim`` bounds and TensorRT's optimization
profiles are made from them; ONNX keeps the symbols as named dynamic axes. Torch-free: the artifact side reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mobilevlm_export.schema import StrEnum

Dim = int | str
# sizes of the symbolic dims in sample inputs: distinct and > 1 so tracing keeps them symbolic
SAMPLE_SIZES = {"batch": 2, "seq": 3, "past": 5, "max_cache": 16}
# token ids of sample inputs: above the special ids (0-2) and inside any vocabulary a test checkpoint has
SAMPLE_ID_RANGE = (3, 100)
# the prompt length (text tokens) engines tune for when a range's opt is not given otherwise
OPT_PROMPT_TOKENS = 64


class KVCache(StrEnum):
    """A decoder's KV-cache contract: ``dynamic`` (the cache is an input and an output: ONNX Runtime, TensorRT) or
    ``static`` (a fixed-size cache updated in place by the program: ExecuTorch)."""

    DYNAMIC = "dynamic"
    STATIC = "static"


@dataclass(frozen=True)
class DimRange:
    """The sizes a symbolic dim takes at run time: ``min <= opt <= max`` (``opt``: what engines tune for)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dim range must satisfy 0 <= min <= opt <= max, got {self}")

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class Limits:
    """What a build is sized for: the largest batch, prompt (image tokens included) and context (prompt +
    answer, the KV cache's length)."""

    max_batch: int
    max_prompt: int
    max_context: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    dims: tuple[Dim, ...]

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape for the symbol values in ``sizes`` (``past+seq`` is summed)."""
        return tuple(d if isinstance(d, int) else sum(sizes[s] for s in d.split("+")) for d in self.dims)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    def __str__(self) -> str:
        return f"{self.name} {self.dtype}[{', '.join(map(str, self.dims))}]"


@dataclass(frozen=True)
class GraphContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[TensorSpec, ...] = ()  # mutable buffers (static KV cache), not inputs or outputs
    ranges: dict[str, DimRange] = field(default_factory=dict)  # every symbol of the inputs: its sizes

    def to_dict(self) -> dict:
        d = {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
             "outputs": [t.to_dict() for t in self.outputs]}
        if self.state:
            d["state"] = [t.to_dict() for t in self.state]
        if self.ranges:
            d["ranges"] = {k: r.to_dict() for k, r in self.ranges.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GraphContract:
        def specs(items):
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

        return cls(d["name"], specs(d["inputs"]), specs(d["outputs"]), specs(d.get("state", [])),
                   {k: DimRange(**r) for k, r in d.get("ranges", {}).items()})

    def sample_inputs(self, sizes: dict[str, int] = SAMPLE_SIZES, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the contract's shapes (ids and positions valid for the model)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for t in self.inputs:
            shape = t.shape(sizes)
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(*SAMPLE_ID_RANGE, shape).astype(t.dtype)
            elif t.name == "attention_mask":
                feeds[t.name] = np.ones(shape, t.dtype)
            elif t.name == "position_ids":
                feeds[t.name] = np.broadcast_to(np.arange(sizes["past"], sizes["past"] + shape[1]), shape).astype(
                    t.dtype)
            elif t.name == "input_pos":
                feeds[t.name] = np.arange(shape[0], dtype=t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds


@dataclass(frozen=True)
class ModelDims:
    """The sizes a split needs, read from a loaded checkpoint."""

    image_size: int
    patches: int  # patch features the vision encoder returns (CLS dropped for "patch")
    vision_hidden: int
    image_tokens: int
    hidden: int
    intermediate: int  # the decoder MLP's width (input width of down_proj)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_context: int



def kv_names(layer: int) -> tuple[str, str, str, str]:
    """(past key, past value, present key, present value) names of one decoder layer."""
    return (f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
            f"present.{layer}.key", f"present.{layer}.value")


def graph_contracts(d: ModelDims, dtype: str = "float32", kv: KVCache = KVCache.DYNAMIC,
                    fused_image_encoder: bool = False, last_logits: bool = False,
                    limits: Limits | None = None, index_dtype: str = "int64") -> list[GraphContract]:
    """The graphs a split makes. ``kv``: "dynamic" (ONNX/TensorRT) or "static" (ExecuTorch, in-place cache).
    ``last_logits``: the decoder returns logits [batch, 1, vocab] of the last position only.
    ``limits`` sizes the dims' ranges (default: batch 1, the model's whole context). ``index_dtype``: the dtype of
    ``input_ids``, ``attention_mask`` and ``position_ids`` in a dynamic-KV split (TensorRT prefers int32)."""
    limits = limits or Limits(max_batch=1, max_prompt=d.max_context, max_context=d.max_context)
    batch = DimRange(1, 1, limits.max_batch)
    pixel = TensorSpec("pixel_values", dtype, ("batch", 3, d.image_size, d.image_size))
    feats = TensorSpec("image_features", dtype, ("batch", d.patches, d.vision_hidden))
    embeds = TensorSpec("image_embeds", dtype, ("batch", d.image_tokens, d.hidden))
    image_ranges = {"batch": batch}
    if fused_image_encoder:
        graphs = [GraphContract("image_encoder", (pixel,), (embeds,), ranges=image_ranges)]
    else:
        graphs = [GraphContract("vision_encoder", (pixel,), (feats,), ranges=image_ranges),
                  GraphContract("projector", (feats,), (embeds,), ranges=image_ranges)]
    # text ids: a prompt's text (the image tokens are spliced in after embedding) or one new token
    seq = DimRange(1, min(OPT_PROMPT_TOKENS, limits.max_prompt), limits.max_prompt)
    ids_dtype = index_dtype if kv == "dynamic" else "int64"
    graphs.append(GraphContract("embed_tokens", (TensorSpec("input_ids", ids_dtype, ("batch", "seq")),),
                                (TensorSpec("inputs_embeds", dtype, ("batch", "seq", d.hidden)),),
                                ranges={"batch": batch, "seq": seq}))
    inputs_embeds = TensorSpec("inputs_embeds", dtype, ("batch", "seq", d.hidden))
    logits = TensorSpec("logits", "float32", ("batch", 1 if last_logits else "seq", d.vocab))
    cache = ("batch", d.kv_heads, "past", d.head_dim)
    if kv == "dynamic":
        ins = [inputs_embeds, TensorSpec("attention_mask", index_dtype, ("batch", "past+seq")),
               TensorSpec("position_ids", index_dtype, ("batch", "seq"))]
        outs = [logits]
        for i in range(d.layers):
            pk, pv, ok, ov = kv_names(i)
            ins += [TensorSpec(pk, dtype, cache), TensorSpec(pv, dtype, cache)]
            outs += [TensorSpec(ok, dtype, cache[:2] + ("past+seq",) + cache[3:]),
                     TensorSpec(ov, dtype, cache[:2] + ("past+seq",) + cache[3:])]
        past = DimRange(0, min(limits.max_prompt, limits.max_context - 1), limits.max_context - 1)
        # a prompt is the image's tokens and the text: engines tune prefill for that, not for the text alone
        prompt = DimRange(1, min(d.image_tokens + OPT_PROMPT_TOKENS, limits.max_prompt), limits.max_prompt)
        graphs.append(GraphContract("decoder", tuple(ins), tuple(outs),
                                    ranges={"batch": batch, "seq": prompt, "past": past}))
    elif kv == "static":
        # ExecuTorch: batch 1; the cache is [1, max_cache, kv_heads, head_dim] buffers written at input_pos
        graphs = [GraphContract(g.name, _batch_one(g.inputs), _batch_one(g.outputs),
                                ranges={k: r for k, r in g.ranges.items() if k != "batch"}) for g in graphs]
        state = []
        for i in range(d.layers):
            state += [TensorSpec(f"k_cache_{i}", dtype, (1, "max_cache", d.kv_heads, d.head_dim)),
                      TensorSpec(f"v_cache_{i}", dtype, (1, "max_cache", d.kv_heads, d.head_dim))]
        cache_seq = DimRange(1, seq.opt, limits.max_context)  # prefill in one call up to the whole cache
        graphs.append(GraphContract(
            "decoder", (TensorSpec("inputs_embeds", dtype, (1, "seq", d.hidden)),
                        TensorSpec("input_pos", "int64", ("seq",))),
            (TensorSpec("logits", "float32", (1, 1 if last_logits else "seq", d.vocab)),), tuple(state),
            ranges={"seq": cache_seq}))
    else:
        raise ValueError(f"kv must be 'dynamic' or 'static', got {kv!r}")
    return graphs


def _batch_one(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.dtype, tuple(1 if d == "batch" else d for d in t.dims)) for t in specs)


@dataclass(frozen=True)
class FoundSpec:
    """A graph's tensor as its runtime reports it, to compare with the contract (``io_mismatch``). ``name``: None
    where the runtime keeps no names (ExecuTorch's methods take and give tensors by position); ``dtype``: the numpy
    name, or the runtime's own where numpy has none; ``dims``: ints, and a symbol name or None for a dynamic dim."""

    name: str | None
    dtype: str
    dims: tuple[int | str | None, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in self.dims)
        return f"{self.dtype}[{dims}]"


def _spec_text(t: TensorSpec) -> str:
    return f"{t.dtype}[{', '.join(map(str, t.dims))}]"


def _dim_fits(want: Dim, got: int | str | None, ranges: dict[str, DimRange], upper_bounds: bool) -> bool:
    if not isinstance(got, int) or got < 0:  # dynamic in the graph: it takes whatever the contract gives
        return True
    if isinstance(want, int):
        return got == want
    r = ranges.get(want)
    if upper_bounds:  # the runtime reports a dynamic dim's capacity: it must hold the largest size the contract runs
        return r is None or got >= r.max
    return r is not None and r.min == r.max == got  # a fixed size where the contract's symbol takes one value only


def io_mismatch(contract: GraphContract, inputs: list[FoundSpec], outputs: list[FoundSpec],
                upper_bounds: bool = False) -> str | None:
    """The first way a graph's inputs/outputs, as its runtime reports them, differ from ``contract``: names (or
    counts, where the runtime keeps no names), dtypes, ranks, static dims; None when they fit. A dim the contract
    gives as a number must be that number or dynamic in the graph; a symbolic one must be dynamic, or fixed where the
    contract's range allows one size only. ``upper_bounds``: a runtime reports a dynamic dim as its largest size
    (ExecuTorch's memory-planned sizes), which must then be at least the symbol's range max.
    The answer is one phrase: "input inputs_embeds is float16[batch, seq, 64] in the graph, float32[batch, seq, 64]
    in the contract"."""
    for role, want, got in (("input", contract.inputs, inputs), ("output", contract.outputs, outputs)):
        if all(g.name is not None for g in got):
            found = {g.name: g for g in got}
            expected = {t.name for t in want}
            missing = [t.name for t in want if t.name not in found]
            extra = [g.name for g in got if g.name not in expected]
            if missing or extra:
                parts = ([f"lacks {role}s {missing[:4]}"] if missing else []) + (
                    [f"has {role}s {extra[:4]} the contract does not"] if extra else [])
                return f"the graph {' and '.join(parts)} (its {role}s: {[g.name for g in got][:6]})"
            pairs = [(t, found[t.name]) for t in want]
        else:
            if len(got) != len(want):
                return (f"the graph has {len(got)} {role}s, the contract {len(want)} "
                        f"({', '.join(t.name for t in want)})")
            pairs = list(zip(want, got, strict=True))
        for i, (t, g) in enumerate(pairs):
            dims_fit = len(g.dims) == len(t.dims) and all(
                _dim_fits(w, d, contract.ranges, upper_bounds) for w, d in zip(t.dims, g.dims, strict=True))
            if g.dtype != t.dtype or not dims_fit:
                which = t.name if g.name is not None else f"{i} ({t.name})"
                return f"{role} {which} is {g} in the graph, {_spec_text(t)} in the contract"
    return None


def contract_mismatch(path, contract: GraphContract, why: str, what: str = "graph") -> str:
    """The one line for an ``io_mismatch``: the file, the difference, where the contract is recorded."""
    return (f"{path}: {why} (manifest.json graphs.{contract.name}.contract): a {what} of another graph, build or "
            "target?")
