"""The build side's tokenizer, reproduced for the artifact side without torch or transformers.

transformers 5 has no SentencePiece tokenizer for LLaMA any more: ``AutoTokenizer.from_pretrained(..., use_fast=False)``
returns the ``tokenizers`` BPE that it builds from ``tokenizer.model`` (the pieces give the vocabulary and the merges;
SentencePiece's normalizer, dummy prefix, ``split_digits`` and whitespace splitting play no part). SentencePiece's own
encoder therefore gives other ids (``" Hi"``: one "▁" there, two in SentencePiece), so this module runs that BPE in
Python, with ``sentencepiece`` only to read ``tokenizer.model``. ``runtime.tokenizer_files`` reads the files (a
``save_pretrained`` directory or a checkpoint's).
"""

from __future__ import annotations

import heapq
import re
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.tokenizer_files import TokenSpec, read_spec

# Rust's char::is_whitespace (Unicode White_Space), what lstrip/rstrip of added tokens strip; str.isspace differs.
_WHITESPACE = "".join(map(chr, [*range(0x9, 0xE), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                                0x202F, 0x205F, 0x3000]))
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class Tokenizer:
    """Encode and decode as the build side's transformers tokenizer does (same ids, same text), in plain Python."""

    def __init__(self, spec: TokenSpec) -> None:
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
        return cls(read_spec(Path(path)))

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
