"""The build side's tokenizer, reproduced for the artifact side without torch or transformers.

transformers 5 has no SentencePiece tokenizer for LLaMA any more: ``AutoTokenizer.from_pretrained(..., use_fast=False)``
returns the ``tokenizers`` BPE that it builds from ``tokenizer.model`` (the pieces give the vocabulary and the merges;
SentencePiece's normalizer, dummy prefix, ``split_digits`` and whitespace splitting play no part). SentencePiece's own
encoder therefore gives other ids (``" Hi"``: one "▁" there, two in SentencePiece), so this module runs that BPE in
Python, with ``sentencepiece`` only to read ``tokenizer.model``. What it reads:

* a directory written by ``save_pretrained`` (no ``config.json``): ``tokenizer.json`` as saved, which is the build
  side's tokenizer as it was (its ``tokenizer_config.json`` has lost ``legacy``; the saved pre-tokenizer has not);
* a checkpoint directory (``config.json``): what ``from_pretrained`` builds from it. The vocabulary and merges come
  from ``tokenizer.json`` or else ``tokenizer.model``; ``legacy``, ``add_prefix_space``, ``add_bos_token`` and the
  special tokens from ``tokenizer_config.json`` / ``special_tokens_map.json``; then the ``<im_patch>`` /
  ``<im_start>`` / ``<im_end>`` tokens that ``config.json`` asks for, as ``checkpoint.model`` adds them.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IM_END, IM_PATCH, IM_START

# checkpoint.model's image tokens (that module imports torch, so they are repeated here).
# transformers' named special tokens, in the order it adds them.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# LlamaTokenizer's defaults for the tokens its config does not name.
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Rust's char::is_whitespace (Unicode White_Space), what lstrip/rstrip of added tokens strip; str.isspace differs.
_WHITESPACE = "".join(map(chr, [*range(0x9, 0xE), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                                0x202F, 0x205F, 0x3000]))
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class _Added:
    """A token cut out of the text before BPE (``tokenizers``' added vocabulary). ``special`` ones are dropped by
    ``decode(skip_special_tokens=True)``; ``normalized`` ones are matched in a second pass."""

    content: str
    id: int
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False


@dataclass
class _Spec:
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
    added: dict[int, _Added] = field(default_factory=dict)
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
        token = _Added(content, -1, special, (not special) if normalized is None else normalized, lstrip, rstrip)
        if special:
            self.special.add(content)
        if any(_same(t, token) for t in self.added.values()):
            return
        ids = {t.content: i for i, t in self.added.items()}
        new_id = ids.get(content, self.vocab.get(content))
        if new_id is None:
            top = max(self.added, default=None)
            new_id = top + 1 if top is not None and (top >= len(self.vocab) or not self.vocab) else len(self.vocab)
        self.added[new_id] = _Added(content, new_id, special, token.normalized, lstrip, rstrip)

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


def _same(a: _Added, b: _Added) -> bool:
    return (a.content, a.special, a.normalized, a.lstrip, a.rstrip) == (b.content, b.special, b.normalized, b.lstrip,
                                                                         b.rstrip)


class Tokenizer:
    """Encode and decode as the build side's transformers tokenizer does (same ids, same text), in plain Python."""

    def __init__(self, spec: _Spec) -> None:
        self._spec = spec
        vocab = spec.vocab
        self._id_to_piece = {i: p for p, i in vocab.items()}
        self._merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(spec.merges):
            try:
                self._merges[(vocab[a], vocab[b])] = (rank, vocab[a + b])
            except KeyError as exc:
                raise UserError(f"{spec.source}: merge {a!r} + {b!r} uses {exc.args[0]!r}, which is not in the "
                                f"vocabulary") from None
        self._unk_id = vocab.get(spec.unk_token) if spec.unk_token is not None else None
        if spec.unk_token is not None and self._unk_id is None:
            raise UserError(f"{spec.source}: unk_token {spec.unk_token!r} is not in the vocabulary")
        self._byte_ids = {b: vocab.get(f"<0x{b:02X}>") for b in range(256)} if spec.byte_fallback else {}
        self._added_text = {i: t.content for i, t in spec.added.items()}
        self._by_content = {t.content: t for t in spec.added.values()}
        tokens = list(spec.added.values())
        self._raw_re = _alternation(t.content for t in tokens if not t.normalized)
        self._norm_re = _alternation(t.content for t in tokens if t.normalized)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer directory (``save_pretrained``'s) or a checkpoint directory. ``UserError`` on bad input."""
        root = Path(path)
        if not root.is_dir():
            raise UserError(f"{root}: no such tokenizer directory")
        if (root / "config.json").is_file():
            build, blame = _checkpoint_spec, "tokenizer_config.json"
        elif (root / "tokenizer.json").is_file():
            build, blame = _saved_spec, "tokenizer.json"
        else:
            build, blame = _pretrained_spec, "tokenizer_config.json"
        try:
            spec = build(root)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a value of the wrong type or shape
            raise UserError(f"{root / blame}: unexpected content ({type(exc).__name__}: {exc})") from None
        return cls(spec)

    # -- properties -------------------------------------------------------------------------------------------------

    @property
    def bos_token_id(self) -> int | None:
        return self._spec.token_id(self._spec.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._spec.token_id(self._spec.eos_token)

    def __len__(self) -> int:
        """The vocabulary with the added tokens, counted as ``len(hf_tokenizer)`` counts it (distinct strings)."""
        return len(self._spec.vocab.keys() | self._by_content.keys())

    # -- encoding ---------------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with the special tokens the tokenizer adds (BOS), as ``hf_tokenizer(text).input_ids``."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        ids: list[int] = []
        for piece, start, token_id in self._cut_added(text):
            if token_id is not None:
                ids.append(token_id)
            else:
                for word in self._pre_tokenize(piece, start):
                    ids.extend(self._bpe(word))
        out: list[int] = []
        for slot in self._spec.template:
            out.extend(ids if slot is None else [slot])
        return out

    def _cut_added(self, text: str) -> list[tuple[str, int, int | None]]:
        """Split ``text`` at the added tokens: (piece, offset in ``text``, token id or None). Non-normalized tokens
        first, then normalized ones in what is left (there is no normalizer, so both look at the same text)."""
        pieces = self._find(text, 0, self._raw_re)
        if self._norm_re is not None:
            pieces = [p for piece in pieces
                      for p in ([piece] if piece[2] is not None else self._find(piece[0], piece[1], self._norm_re))]
        return [p for p in pieces if p[2] is not None or p[0]]

    def _find(self, text: str, base: int, pattern: re.Pattern | None) -> list[tuple[str, int, int | None]]:
        """``AddedVocabulary::find_matches``: leftmost-longest matches, widened over whitespace by lstrip / rstrip."""
        if pattern is None or not text:
            return [(text, base, None)]
        out = []
        offset = 0
        for m in pattern.finditer(text):
            token = self._by_content[m.group()]
            if self._spec.split_special and token.content in self._spec.special:
                continue
            start, stop = m.start(), m.end()
            if token.lstrip:
                start = max(len(text[:start].rstrip(_WHITESPACE)), offset)
            if token.rstrip:
                stop = len(text) - len(text[stop:].lstrip(_WHITESPACE))
            if offset < start:
                out.append((text[offset:start], base + offset, None))
            out.append((text[start:stop], base + start, token.id))
            offset = stop
        if offset != len(text):
            out.append((text[offset:], base + offset, None))
        return out

    def _pre_tokenize(self, piece: str, start: int) -> list[str]:
        """The Metaspace pre-tokenizer: " " -> "▁", and a "▁" in front (each piece for "always", the text's start
        for "first") unless the piece starts with one already."""
        spec = self._spec
        if spec.prepend is None:
            return [piece]
        rep = spec.replacement
        word = piece.replace(" ", rep)
        if not word.startswith(rep) and (spec.prepend == "always" or (spec.prepend == "first" and start == 0)):
            word = rep + word
        if not spec.split:
            return [word]
        return [w for w in re.split(f"(?={re.escape(rep)})", word) if w]

    def _bpe(self, word: str) -> list[int]:
        """``tokenizers``' BPE on one word: a symbol per character (its UTF-8 bytes as ``<0xNN>`` pieces when it is
        not in the vocabulary), then the merges."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        vocab = self._spec.vocab
        if self._spec.ignore_merges and word in vocab:
            return [vocab[word]]
        syms: list[int] = []
        unk = None  # an unknown-token symbol not yet placed (runs of unknown characters fuse into one)
        for ch in word:
            piece_id = vocab.get(ch)
            if piece_id is not None:
                if unk is not None:
                    syms.append(unk)
                    unk = None
                syms.append(piece_id)
                continue
            if self._byte_ids:
                fallback = [self._byte_ids[b] for b in ch.encode("utf-8")]
                if None not in fallback:
                    syms.extend(fallback)  # before a pending unknown, as tokenizers has it
                    continue
            if self._unk_id is not None:  # without one (transformers' LLaMA BPE has none) the character is dropped
                if unk is not None and not self._spec.fuse_unk:
                    syms.append(unk)
                unk = self._unk_id
        if unk is not None:
            syms.append(unk)
        out = self._merge(syms)
        if len(self._cache) < 10000:
            self._cache[word] = out
        return out

    def _merge(self, syms: list[int]) -> list[int]:
        """``tokenizers``' ``Word::merge_all``: apply the lowest-ranked merge first, the leftmost among equals."""
        merges = self._merges
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1:] = [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        queue = []
        for i in range(n - 1):
            m = merges.get((syms[i], syms[i + 1]))
            if m is not None:
                queue.append((m[0], i, m[1]))
        heapq.heapify(queue)
        while queue:
            _rank, pos, new_id = heapq.heappop(queue)
            right = nxt[pos]
            if not alive[pos] or right == -1:
                continue
            m = merges.get((syms[pos], syms[right]))
            if m is None or m[1] != new_id:
                continue  # the pair changed since this entry was queued
            syms[pos] = new_id
            alive[right] = False
            after = nxt[right]
            nxt[pos] = after
            if after != -1:
                prv[after] = pos
            before = prv[pos]
            if before != -1 and (m := merges.get((syms[before], new_id))) is not None:
                heapq.heappush(queue, (m[0], before, m[1]))
            if after != -1 and (m := merges.get((new_id, syms[after]))) is not None:
                heapq.heappush(queue, (m[0], pos, m[1]))
        return [s for s, keep in zip(syms, alive, strict=True) if keep]

    # -- decoding ---------------------------------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` as ``hf_tokenizer.decode(ids, skip_special_tokens=...)`` gives it; unknown ids are left
        out, as there."""
        tokens = []
        for i in [ids] if isinstance(ids, int) else ids:
            i = int(i)
            if not 0 <= i < 2**32:
                raise OverflowError(f"token id {i} does not fit in a u32 (transformers raises OverflowError too)")
            token = self._added_text.get(i)
            if token is None:
                token = self._id_to_piece.get(i)
            if token is None or (skip_special_tokens and token in self._spec.special):
                continue
            tokens.append(token)
        if not self._spec.decoders:
            return " ".join(tokens)
        for step in self._spec.decoders:
            tokens = _DECODERS[step[0]](tokens, *step[1:])
        return "".join(tokens)


def _alternation(contents) -> re.Pattern | None:
    """A regex that finds the leftmost, then longest, of ``contents`` (what aho-corasick's LeftmostLongest does)."""
    contents = sorted(set(contents), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None


def _replace(tokens: list[str], old: str, new: str) -> list[str]:
    return [t.replace(old, new) for t in tokens]


def _byte_fallback(tokens: list[str]) -> list[str]:
    """Runs of ``<0xNN>`` pieces become their UTF-8 text, or one U+FFFD per byte when that is not valid UTF-8."""
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending.clear()

    for t in tokens:
        if _BYTE_PIECE.fullmatch(t):
            pending.append(int(t[3:5], 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _fuse(tokens: list[str]) -> list[str]:
    return ["".join(tokens)]


def _strip(tokens: list[str], content: str, start: int, stop: int) -> list[str]:
    out = []
    for t in tokens:
        lo = 0
        while lo < min(start, len(t)) and t[lo] == content:
            lo += 1
        hi = len(t)
        while hi > lo and len(t) - hi < stop and t[hi - 1] == content:
            hi -= 1
        out.append(t[lo:hi])
    return out


_DECODERS = {"replace": _replace, "byte_fallback": _byte_fallback, "fuse": _fuse, "strip": _strip}
_LLAMA_DECODERS = [("replace", "\u2581", " "), ("byte_fallback",), ("fuse",)]


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


def _saved_spec(root: Path) -> _Spec:
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
    spec = _Spec(vocab, merges, path, byte_fallback=bool(model.get("byte_fallback")),
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


def _pretrained_spec(root: Path) -> _Spec:
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
        spec = _Spec(vocab, merges, json_path)
    elif sp_path.is_file():
        vocab, sp_added = _read_sentencepiece(sp_path)
        spec = _Spec(vocab, _generate_merges(vocab), sp_path)
    else:
        raise UserError(f"{root}: no tokenizer (tokenizer.model or tokenizer.json)")

    # Pre-tokenizer and decoder: LlamaTokenizer.__init__'s, from legacy (default False) and add_prefix_space.
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    spec.prepend = ("always" if config.get("legacy", False) else "first") if add_prefix_space else "never"
    spec.decoders = _LLAMA_DECODERS + ([("strip", " ", 1, 0)] if add_prefix_space else [])
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


def _checkpoint_spec(root: Path) -> _Spec:
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
