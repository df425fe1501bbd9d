"""Reading a tokenizer's files into a ``TokenSpec`` (what ``runtime.tokenizer.Tokenizer`` encodes and decodes
with), without torch or transformers. What it reads:

* a directory written by ``save_pretrained`` (no ``config.json``): ``tokenizer.json`` as saved, which is the build
  side's tokenizer as it was (its ``tokenizer_config.json`` has lost ``legacy``; the saved pre-tokenizer has not);
* a checkpoint directory (``config.json``): what ``from_pretrained`` builds from it. The vocabulary and merges come
  from ``tokenizer.json`` or else ``tokenizer.model``; ``legacy``, ``add_prefix_space``, ``add_bos_token`` and the
  special tokens from ``tokenizer_config.json`` / ``special_tokens_map.json``; then the ``<im_patch>`` /
  ``<im_start>`` / ``<im_end>`` tokens that ``config.json`` asks for, as ``checkpoint.model`` adds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IM_END, IM_PATCH, IM_START

# transformers' named special tokens, in the order it adds them.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# LlamaTokenizer's defaults for the tokens its config does not name.
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# the decoder steps of a LLaMA tokenizer built from tokenizer.model (``Tokenizer``'s decoders by name)
LLAMA_DECODERS = [("replace", "\u2581", " "), ("byte_fallback",), ("fuse",)]


@dataclass(frozen=True)
class AddedToken:
    """A token cut out of the text before BPE (``tokenizers``' added vocabulary). ``special`` ones are dropped by
    ``decode(skip_special_tokens=True)``; ``normalized`` ones are matched in a second pass."""

    content: str
    id: int
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False


@dataclass
class TokenSpec:
    """Everything the encoder and decoder need, whatever files it came from."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    source: Path  # the file of the vocabulary, for messages
    byte_fallback: bool = True
    fuse_unk: bool = True
    unk_token: str | None = None
    ignore_merges: bool = False
    prepend: str | None = "always"  # Metaspace's prepend_scheme (always / first / never); None: no Metaspace
    replacement: str = "\u2581"
    split: bool = False
    decoders: list[tuple] = field(default_factory=list)  # ("replace", old, new) / ("byte_fallback",) / ...
    template: list[int | None] = field(default_factory=lambda: [None])  # ids around the text (None)
    bos_token: str | None = None
    eos_token: str | None = None
    split_special: bool = False  # transformers' split_special_tokens: special tokens are not cut out
    added: dict[int, AddedToken] = field(default_factory=dict)
    special: set[str] = field(default_factory=set)

    def add(self, content: str, special: bool, normalized: bool | None = None, lstrip: bool = False,
            rstrip: bool = False, single_word: bool = False) -> None:
        """``tokenizers``' ``add_tokens``: a token equal to one present is ignored; otherwise it takes the id its
        content has (added or in the vocabulary) or the next free one, and once special its content stays special."""
        if single_word:
            raise UserError(f"{self.source}: added token {content!r} is single_word, which this tokenizer does not "
                            f"reproduce")
        if not content:
            return
        token = AddedToken(content, -1, special, (not special) if normalized is None else normalized, lstrip, rstrip)
        if special:
            self.special.add(content)
        if any(same_token(t, token) for t in self.added.values()):
            return
        ids = {t.content: i for i, t in self.added.items()}
        new_id = ids.get(content, self.vocab.get(content))
        if new_id is None:
            top = max(self.added, default=None)
            new_id = top + 1 if top is not None and (top >= len(self.vocab) or not self.vocab) else len(self.vocab)
        self.added[new_id] = AddedToken(content, new_id, special, token.normalized, lstrip, rstrip)

    def add_serialized(self, token: dict, special: bool | None = None) -> None:
        """Add a token as transformers and tokenizers serialize one; ``normalized`` defaults to not ``special`` as
        the token was written, before ``special`` (when given) overrides that."""
        if not isinstance(token, dict) or not isinstance(token.get("content"), str):
            raise UserError(f"{self.source}: an added token is not an object with a 'content' string: {token!r}")
        own = bool(token.get("special", False))
        self.add(token["content"], own if special is None else special, bool(token.get("normalized", not own)),
                 bool(token.get("lstrip")), bool(token.get("rstrip")), bool(token.get("single_word")))

    def token_id(self, token: str | None) -> int | None:
        """The id of ``token``: an added token's, else the vocabulary's."""
        if token is None:
            return None
        for t in self.added.values():
            if t.content == token:
                return t.id
        return self.vocab.get(token)


def same_token(a: AddedToken, b: AddedToken) -> bool:
    return (a.content, a.special, a.normalized, a.lstrip, a.rstrip) == (b.content, b.special, b.normalized, b.lstrip,
                                                                         b.rstrip)


def read_spec(root: Path) -> TokenSpec:
    """The spec of a tokenizer directory (``save_pretrained``'s) or a checkpoint directory. ``UserError`` on bad
    input, naming the file at fault."""
    if not root.is_dir():
        raise UserError(f"{root}: no such tokenizer directory")
    if (root / "config.json").is_file():
        build, blame = _checkpoint_spec, "tokenizer_config.json"
    elif (root / "tokenizer.json").is_file():
        build, blame = _saved_spec, "tokenizer.json"
    else:
        build, blame = _pretrained_spec, "tokenizer_config.json"
    try:
        return build(root)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a value of the wrong type or shape
        raise UserError(f"{root / blame}: unexpected content ({type(exc).__name__}: {exc})") from None


# -- reading files --------------------------------------------------------------------------------------------------


def _read_json(path: Path, required: bool = True):
    if not path.is_file():
        if required:
            raise UserError(f"{path}: no such file")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


def _read_object(path: Path) -> dict:
    data = _read_json(path, required=False)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _read_sentencepiece(path: Path) -> tuple[dict[str, int], list[tuple[str, bool]]]:
    """The pieces of a SentencePiece model: vocabulary (piece -> id) and the control (special) and user-defined
    (not special) pieces, which transformers adds as tokens."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise UserError(f"{path}: reading it needs the sentencepiece and protobuf packages ({exc})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, OSError for the file
        raise UserError(f"{path}: not a readable SentencePiece model ({type(exc).__name__}: {exc})") from None
    if not proto.pieces:
        raise UserError(f"{path}: not a SentencePiece model (no pieces)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    added = [(p.piece, p.type == kinds.CONTROL) for p in proto.pieces if p.type in (kinds.CONTROL, kinds.USER_DEFINED)]
    return vocab, added


def _generate_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """transformers' ``generate_merges`` for a SentencePiece vocabulary: every split of every piece into two pieces,
    ordered by the id of the piece they make, then by the lengths of the two halves."""
    merges = []
    for piece, piece_id in vocab.items():
        local = [(piece[:k], piece[k:], piece_id) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])))
    return [(a, b) for a, b, _ in merges]


def _json_model(data: dict, path: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict]:
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UserError(f"{path}: the model is not a BPE with a vocabulary (this tokenizer reads LLaMA's)")
    merges = []
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise UserError(f"{path}: merge {m!r} is not a pair")
        merges.append((str(pair[0]), str(pair[1])))
    try:
        vocab = {str(k): int(v) for k, v in model["vocab"].items()}
    except (TypeError, ValueError):
        raise UserError(f"{path}: the vocabulary's ids are not all integers") from None
    return vocab, merges, model


def _json_template(processor, path: Path) -> list[int | None]:
    """A TemplateProcessing post-processor's single-sequence template: the ids it puts around the text."""
    if processor is None:
        return [None]
    if processor.get("type") != "TemplateProcessing":
        raise UserError(f"{path}: post_processor {processor.get('type')!r} is not supported (TemplateProcessing is)")
    out: list[int | None] = []
    for item in processor.get("single", []):
        if "Sequence" in item:
            out.append(None)
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            try:
                out.extend(int(i) for i in processor["special_tokens"][name]["ids"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: post_processor names {name!r} without its ids") from None
        else:
            raise UserError(f"{path}: post_processor item {item!r} is not supported")
    if out.count(None) != 1:
        raise UserError(f"{path}: post_processor's single template must hold the sequence once")
    return out


def _saved_spec(root: Path) -> TokenSpec:
    """``tokenizer.json`` taken literally (what ``tokenizers.Tokenizer.from_file`` builds)."""
    path = root / "tokenizer.json"
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    config = _read_object(root / "tokenizer_config.json")
    vocab, merges, model = _json_model(data, path)
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UserError(f"{path}: BPE {key} is not supported")
    if data.get("normalizer") is not None:
        raise UserError(f"{path}: normalizer {data['normalizer'].get('type')!r} is not supported (LLaMA's is null)")
    spec = TokenSpec(vocab, merges, path, byte_fallback=bool(model.get("byte_fallback")),
                 fuse_unk=bool(model.get("fuse_unk")), unk_token=model.get("unk_token"),
                 ignore_merges=bool(model.get("ignore_merges")),
                 split_special=bool(config.get("split_special_tokens", False)))
    pre = data.get("pre_tokenizer")
    if pre is None:
        spec.prepend = None
    elif pre.get("type") == "Metaspace":
        spec.replacement = pre.get("replacement", "\u2581")
        spec.prepend = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space", True) else "never")
        spec.split = bool(pre.get("split", True))
        if spec.prepend not in ("always", "first", "never"):
            raise UserError(f"{path}: Metaspace prepend_scheme {spec.prepend!r} is not known")
    else:
        raise UserError(f"{path}: pre_tokenizer {pre.get('type')!r} is not supported (Metaspace is)")
    spec.decoders = _json_decoders(data.get("decoder"), path)
    for token in data.get("added_tokens") or []:
        spec.add_serialized(token)
    spec.template = _json_template(data.get("post_processor"), path)
    names = {**_read_object(root / "special_tokens_map.json"), **config}
    spec.bos_token, spec.eos_token = _content(names.get("bos_token")), _content(names.get("eos_token"))
    return spec


def _json_decoders(decoder, path: Path) -> list[tuple]:
    if decoder is None:
        return []
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    out: list[tuple] = []
    for d in steps:
        kind = d.get("type")
        if kind == "Replace" and isinstance(d.get("pattern"), dict) and "String" in d["pattern"]:
            out.append(("replace", d["pattern"]["String"], d.get("content", "")))
        elif kind == "ByteFallback":
            out.append(("byte_fallback",))
        elif kind == "Fuse":
            out.append(("fuse",))
        elif kind == "Strip":
            out.append(("strip", d.get("content", " "), int(d.get("start", 0)), int(d.get("stop", 0))))
        else:
            raise UserError(f"{path}: decoder {kind!r} is not supported (Replace, ByteFallback, Fuse, Strip are)")
    return out


def _content(value) -> str | None:
    """A token as configs write it: a string, or an AddedToken object with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pretrained_spec(root: Path) -> TokenSpec:
    """What transformers 5's ``LlamaTokenizer.from_pretrained`` builds from a directory."""
    config = _read_object(root / "tokenizer_config.json")
    json_path, sp_path = root / "tokenizer.json", root / "tokenizer.model"
    data = None
    additional = None  # the additional_special_tokens that become the extra special tokens when none are given
    if json_path.is_file():
        data = _read_json(json_path)
        if not isinstance(data, dict):
            raise UserError(f"{json_path}: expected a JSON object")
        vocab, merges, _ = _json_model(data, json_path)
        spec = TokenSpec(vocab, merges, json_path)
    elif sp_path.is_file():
        vocab, sp_added = _read_sentencepiece(sp_path)
        spec = TokenSpec(vocab, _generate_merges(vocab), sp_path)
    else:
        raise UserError(f"{root}: no tokenizer (tokenizer.model or tokenizer.json)")

    # Pre-tokenizer and decoder: LlamaTokenizer.__init__'s, from legacy (default False) and add_prefix_space.
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    spec.prepend = ("always" if config.get("legacy", False) else "first") if add_prefix_space else "never"
    spec.decoders = LLAMA_DECODERS + ([("strip", " ", 1, 0)] if add_prefix_space else [])
    spec.split_special = bool(config.get("split_special_tokens", False))

    # Special tokens, in the order from_pretrained and TokenizersBackend.__init__ add them.
    named = dict(LLAMA_DEFAULTS)
    named.update({k: v for k, v in config.items() if k in NAMED_TOKENS})
    custom = {k: v for k, v in config.items() if k not in NAMED_TOKENS and k.endswith("_token") and isinstance(v, str)}
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    has_extra = "extra_special_tokens" in config or extra is not None
    decoder: dict[int, dict] = {}
    if "added_tokens_decoder" in config:
        for idx, token in (config["added_tokens_decoder"] or {}).items():
            decoder[int(idx)] = token if isinstance(token, dict) else {"content": token}
    else:
        for key, value in _read_object(root / "special_tokens_map.json").items():
            if key == "extra_special_tokens" and isinstance(value, list):
                extra = list(extra or []) + [v for v in value if v not in (extra or [])]
                has_extra = True
            elif key == "additional_special_tokens":
                additional = value
            elif key in NAMED_TOKENS:
                named[key] = {**value, "special": True} if isinstance(value, dict) else value
            elif key.endswith("_token") and isinstance(value, str):
                custom[key] = value
        specials = {_content(v) for v in [*named.values(), *custom.values(), *(extra or [])]} - {None}
        for content, idx in _read_object(root / "added_tokens.json").items():
            is_special = content in specials
            decoder[int(idx)] = {"content": content, "special": is_special, "normalized": not is_special}
        for token in (data or {}).get("added_tokens") or []:
            if isinstance(token, dict) and "id" in token:
                decoder[int(token["id"])] = token
    if data is None:
        additional = [{"content": piece, "special": special, "normalized": False} for piece, special in sp_added]
    if not has_extra:
        extra = additional
    if isinstance(extra, dict):
        custom.update(extra)
        extra = None
    for idx in sorted(decoder):
        spec.add_serialized(decoder[idx])
    in_decoder = {_content(t) for t in decoder.values()}
    named_contents = {_content(v) for v in [*named.values(), *custom.values()]}
    for value in [named.get(k) for k in NAMED_TOKENS] + list(custom.values()):
        if _content(value) is not None and _content(value) not in in_decoder:
            spec.add_serialized(value if isinstance(value, dict) else {"content": value, "special": True}, True)
    for value in extra or []:
        if _content(value) is not None and _content(value) not in in_decoder:
            token = value if isinstance(value, dict) else {"content": value, "special": True}
            spec.add_serialized(token, True if _content(value) in named_contents else None)
    spec.bos_token, spec.eos_token = _content(named.get("bos_token")), _content(named.get("eos_token"))

    # Post-processor: tokenizer.json's; else one from add_bos_token / add_eos_token (default False), which
    # from_pretrained ignores when there is a tokenizer.json.
    if data is not None and data.get("post_processor") is not None:
        spec.template = _json_template(data["post_processor"], json_path)
    else:
        use_config = data is None
        bos, eos = spec.token_id(spec.bos_token), spec.token_id(spec.eos_token)
        spec.template = ([bos] if use_config and config.get("add_bos_token") and bos is not None else []) + [None] + (
            [eos] if use_config and config.get("add_eos_token") and eos is not None else [])
    return spec


def _checkpoint_spec(root: Path) -> TokenSpec:
    """A checkpoint directory, as ``checkpoint.model`` loads its tokenizer: from_pretrained, then the image tokens its
    ``config.json`` asks for (``mm_use_im_patch_token`` defaults to true, as ``read_config`` has it)."""
    hf_config = _read_object(root / "config.json")
    spec = _pretrained_spec(root)
    if hf_config.get("mm_use_im_patch_token", True):
        spec.add(IM_PATCH, special=True, normalized=False)
    if hf_config.get("mm_use_im_start_end", False):
        spec.add(IM_START, special=True, normalized=False)
        spec.add(IM_END, special=True, normalized=False)
    return spec
