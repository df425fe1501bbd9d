"""Graph I/O contracts as data: names, dtypes and dims (ints, or symbols for dynamic axes).

Export, verification and benchmarks all read these. Symbols: ``batch``, ``seq`` (new tokens), ``past``
(cached tokens), ``past+seq``, ``max_cache`` (static KV length).
"""

from __future__ import annotations

from dataclasses import dataclass

Dim = int | str


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

    def to_dict(self) -> dict:
        d = {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
             "outputs": [t.to_dict() for t in self.outputs]}
        if self.state:
            d["state"] = [t.to_dict() for t in self.state]
        return d


@dataclass(frozen=True)
class ModelDims:
    """The sizes a split needs, read from a loaded checkpoint."""

    image_size: int
    patches: int  # patch features the vision encoder returns (CLS dropped for "patch")
    vision_hidden: int
    image_tokens: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_context: int

    @classmethod
    def from_checkpoint(cls, ckpt) -> ModelDims:
        from mobilevlm_export.checkpoint.projector import image_token_count

        cfg = ckpt.config
        tc = ckpt.model.language_model.config
        vc = ckpt.model.vision_tower.config
        grid = vc.image_size // vc.patch_size
        patches = grid * grid + (0 if cfg.select_feature == "patch" else 1)
        heads = tc.num_attention_heads
        return cls(
            image_size=vc.image_size, patches=patches, vision_hidden=vc.hidden_size,
            image_tokens=image_token_count(cfg.projector_type, patches), hidden=tc.hidden_size,
            layers=tc.num_hidden_layers, heads=heads, kv_heads=tc.num_key_value_heads or heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
            vocab=ckpt.model.language_model.get_input_embeddings().weight.shape[0],
            max_context=tc.max_position_embeddings,
        )


def kv_names(layer: int) -> tuple[str, str, str, str]:
    """(past key, past value, present key, present value) names of one decoder layer."""
    return (f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
            f"present.{layer}.key", f"present.{layer}.value")


def graph_contracts(d: ModelDims, dtype: str = "float32", kv: str = "dynamic",
                    fused_image_encoder: bool = False, last_logits: bool = False) -> list[GraphContract]:
    """The graphs a split makes. ``kv``: "dynamic" (ONNX/TensorRT) or "static" (ExecuTorch, in-place cache).
    ``last_logits`` (static only): the decoder returns logits [1, 1, vocab] of the last position only."""
    pixel = TensorSpec("pixel_values", dtype, ("batch", 3, d.image_size, d.image_size))
    feats = TensorSpec("image_features", dtype, ("batch", d.patches, d.vision_hidden))
    embeds = TensorSpec("image_embeds", dtype, ("batch", d.image_tokens, d.hidden))
    graphs = []
    if fused_image_encoder:
        graphs.append(GraphContract("image_encoder", (pixel,), (embeds,)))
    else:
        graphs.append(GraphContract("vision_encoder", (pixel,), (feats,)))
        graphs.append(GraphContract("projector", (feats,), (embeds,)))
    graphs.append(GraphContract("embed_tokens", (TensorSpec("input_ids", "int64", ("batch", "seq")),),
                                (TensorSpec("inputs_embeds", dtype, ("batch", "seq", d.hidden)),)))
    inputs_embeds = TensorSpec("inputs_embeds", dtype, ("batch", "seq", d.hidden))
    logits = TensorSpec("logits", "float32", ("batch", "seq", d.vocab))
    cache = ("batch", d.kv_heads, "past", d.head_dim)
    if kv == "dynamic":
        ins = [inputs_embeds, TensorSpec("attention_mask", "int64", ("batch", "past+seq")),
               TensorSpec("position_ids", "int64", ("batch", "seq"))]
        outs = [logits]
        for i in range(d.layers):
            pk, pv, ok, ov = kv_names(i)
            ins += [TensorSpec(pk, dtype, cache), TensorSpec(pv, dtype, cache)]
            outs += [TensorSpec(ok, dtype, cache[:2] + ("past+seq",) + cache[3:]),
                     TensorSpec(ov, dtype, cache[:2] + ("past+seq",) + cache[3:])]
        graphs.append(GraphContract("decoder", tuple(ins), tuple(outs)))
    elif kv == "static":
        # ExecuTorch: batch 1; the cache is [1, max_cache, kv_heads, head_dim] buffers written at input_pos
        graphs = [GraphContract(g.name, tuple(TensorSpec(t.name, t.dtype, tuple(1 if d == "batch" else d
                                                                                    for d in t.dims))
                                              for t in g.inputs),
                                tuple(TensorSpec(t.name, t.dtype, tuple(1 if d == "batch" else d for d in t.dims))
                                      for t in g.outputs)) for g in graphs]
        state = []
        for i in range(d.layers):
            state += [TensorSpec(f"k_cache_{i}", dtype, (1, "max_cache", d.kv_heads, d.head_dim)),
                      TensorSpec(f"v_cache_{i}", dtype, (1, "max_cache", d.kv_heads, d.head_dim))]
        graphs.append(GraphContract(
            "decoder", (TensorSpec("inputs_embeds", dtype, (1, "seq", d.hidden)),
                        TensorSpec("input_pos", "int64", ("seq",))),
            (TensorSpec("logits", "float32", (1, 1 if last_logits else "seq", d.vocab)),), tuple(state)))
    else:
        raise ValueError(f"kv must be 'dynamic' or 'static', got {kv!r}")
    return graphs
