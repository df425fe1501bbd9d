"""runtime.tokenizer: the same ids and text as the build side's transformers tokenizer, without torch/transformers."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevlm_export.checkpoint.config import read_config
from mobilevlm_export.checkpoint.model import _load_tokenizer
from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IMAGE_TAG, conversation_v1
from mobilevlm_export.runtime.tokenizer import Tokenizer

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
IM_TOKENS = {"mm_use_im_patch_token": True, "mm_use_im_start_end": True}
TEXTS = [
    *conversation_v1("What color is the shape?").split(IMAGE_TAG),
    conversation_v1("What color is the shape?"),
    "", " ", "  ", "\n", "Hello world", " leading space", "trailing space ", "  two  spaces   three   ",
    "line one\nline two\n\n  indented\n", "\ttab\tseparated\r\nwindows",
    "unicode: é ü ñ ß 中文 日本語 😀 👍🏽 ＡＢＣ \u00a0nbsp \u2003em \u200bzw", "\x00\x01 control",
    "digits 0123456789 3.14159 2024-11-30", "a literal </s> in text", "and <s> too", "<s>", "</s>", "<unk>", "<s></s>",
    "<im_patch>", "x <im_patch> y<im_patch>z", "<im_start><im_patch><im_end>", " <im_start> a <im_end> ", "<image>",
    "\u2581metaspace\u2581char", "<0x41> not a byte", "What color is the shape? " * 40,
]


def hf_tokenizer(ckpt: Path):
    """The build side's tokenizer (transformers, with the image tokens the config asks for)."""
    return _load_tokenizer(read_config(ckpt))


def saved(hf, out: Path, with_model: Path | None = None) -> Path:
    """What the build writes to ``artifacts/tokenizer``: save_pretrained, plus the checkpoint's tokenizer.model."""
    hf.save_pretrained(str(out))
    if with_model is not None:
        shutil.copyfile(with_model / "tokenizer.model", out / "tokenizer.model")
    return out


def light_checkpoint(src: Path, out: Path, tokenizer_config: dict | None = None, **config) -> Path:
    """A checkpoint directory with only what the tokenizer reads: the tokenizer files and config.json."""
    out.mkdir()
    for f in TOKENIZER_FILES:
        shutil.copyfile(src / f, out / f)
    if tokenizer_config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    raw = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**raw, **config}))
    return out


def assert_same(hf, ours: Tokenizer, texts=TEXTS, seed: int = 0) -> None:
    assert len(ours) == len(hf)
    assert (ours.bos_token_id, ours.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    for text in texts:
        ids = hf(text).input_ids
        assert ours.encode(text) == ids, text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (text, skip)
    rng = random.Random(seed)
    specials = [hf.bos_token_id, hf.eos_token_id, 0, *range(hf.vocab_size, len(hf))]
    for _ in range(200):
        ids = [rng.choice(specials) if rng.random() < 0.2 else rng.randrange(len(hf))
               for _ in range(rng.randint(0, 24))]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), ids


@pytest.fixture(params=["demo", "tiny", "tiny_im"])
def checkpoint(request) -> Path:
    if request.param == "demo":
        return demo_checkpoint_dir()
    if request.param == "tiny":
        return request.getfixturevalue("tiny_ckpt")
    return request.getfixturevalue("ckpt_factory")(**IM_TOKENS)


@pytest.mark.parametrize("layout", ["artifact", "save_pretrained", "checkpoint"])
def test_same_ids_and_text_as_hf(checkpoint, layout, tmp_path):
    hf = hf_tokenizer(checkpoint)
    if layout == "checkpoint":
        path = checkpoint
    else:
        path = saved(hf, tmp_path / "tokenizer", checkpoint if layout == "artifact" else None)
    assert_same(hf, Tokenizer.from_dir(path))


def test_image_tokens_are_added_and_skipped(ckpt_factory, tmp_path):
    hf = hf_tokenizer(ckpt_factory(**IM_TOKENS))
    ours = Tokenizer.from_dir(saved(hf, tmp_path / "tokenizer"))
    assert len(ours) == len(hf) == hf.vocab_size + 3
    ids = ours.encode("a<im_patch>b <im_start>c<im_end>")
    assert [i for i in ids if i >= hf.vocab_size] == [hf.convert_tokens_to_ids(t) for t in
                                                       ("<im_patch>", "<im_start>", "<im_end>")]
    assert "im_" not in ours.decode(ids) and "<im_patch>" in ours.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("change", ["legacy_false", "no_legacy", "no_add_bos", "add_eos", "no_prefix_space", "v4"])
def test_tokenizer_config_variants(change, tiny_ckpt, tmp_path):
    """legacy / add_prefix_space / add_bos_token / add_eos_token as transformers 5 reads them, and a config as
    transformers 4 saved it (added_tokens_decoder, AddedToken objects, sp_model_kwargs)."""
    cfg = json.loads((tiny_ckpt / "tokenizer_config.json").read_text())
    token = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    cfg = {
        "legacy_false": {**cfg, "legacy": False},
        "no_legacy": {k: v for k, v in cfg.items() if k != "legacy"},
        "no_add_bos": {k: v for k, v in cfg.items() if k != "add_bos_token"},
        "add_eos": {**cfg, "add_eos_token": True},
        "no_prefix_space": {**cfg, "add_prefix_space": False},
        "v4": {"add_bos_token": True, "add_eos_token": False, "legacy": False, "pad_token": "<unk>",
               "sp_model_kwargs": {"enable_sampling": True, "alpha": 0.1}, "clean_up_tokenization_spaces": True,
               "tokenizer_class": "LlamaTokenizer", "added_tokens_decoder": {
                   str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])},
               **{k: {**token, "content": c} for k, c in [("bos_token", "<s>"), ("eos_token", "</s>"),
                                                           ("unk_token", "<unk>")]}},
    }[change]
    ckpt = light_checkpoint(tiny_ckpt, tmp_path / "ckpt", cfg, **IM_TOKENS)
    hf = hf_tokenizer(ckpt)
    assert_same(hf, Tokenizer.from_dir(ckpt))
    assert_same(hf, Tokenizer.from_dir(saved(hf, tmp_path / "tokenizer", ckpt)))


def test_random_text(ckpt_factory, tmp_path):
    """Strings made of vocabulary pieces, special tokens, spaces and odd characters."""
    hf = hf_tokenizer(ckpt_factory(**IM_TOKENS))
    ours = Tokenizer.from_dir(saved(hf, tmp_path / "tokenizer", demo_checkpoint_dir()))
    rng = random.Random(1)
    pieces = [p.replace("\u2581", " ") for p in hf.get_vocab()]
    odd = [" ", "  ", "\n", "\t", "\u2581", "é", "中", "😀", "\u00a0", "<s>", "</s>", "<unk>", "<im_patch>",
           "<im_start>", "<im_end>", "<", ">", "0", "42", "\ufffd"]
    texts = ["".join(rng.choice(odd if rng.random() < 0.4 else pieces) for _ in range(rng.randint(1, 16)))
             for _ in range(400)]
    assert_same(hf, ours, texts, seed=1)


def test_bad_input_is_a_user_error(tmp_path):
    def message(path) -> str:
        with pytest.raises(UserError) as err:
            Tokenizer.from_dir(path)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "nowhere" in message(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "tokenizer.model or tokenizer.json" in message(tmp_path / "empty")
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "tokenizer.json").write_text("{not json")
    assert "tokenizer.json" in message(bad_json)
    bad_model = tmp_path / "bad_model"
    bad_model.mkdir()
    (bad_model / "tokenizer.model").write_bytes(b"\x00\xff definitely not a protobuf \xff\xff")
    assert "tokenizer.model" in message(bad_model)
    bad_config = light_checkpoint(demo_checkpoint_dir(), tmp_path / "bad_config")
    (bad_config / "tokenizer_config.json").write_text("[1, 2")
    assert "tokenizer_config.json" in message(bad_config)
    wrong_shape = tmp_path / "wrong_shape"
    wrong_shape.mkdir()
    (wrong_shape / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    assert "tokenizer.json" in message(wrong_shape)


_BLOCKED = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "tokenizers"):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
from mobilevlm_export.runtime.tokenizer import Tokenizer

out = {}
for path, text in json.loads(sys.argv[1]):
    tok = Tokenizer.from_dir(path)
    ids = tok.encode(text)
    out[path] = [ids, tok.decode(ids), len(tok), tok.bos_token_id, tok.eos_token_id]
assert not {"torch", "transformers", "tokenizers"} & {m.split(".")[0] for m in sys.modules}
print(json.dumps(out))
"""


def test_runs_without_torch_or_transformers(ckpt_factory, tmp_path):
    ckpt = ckpt_factory(**IM_TOKENS)
    hf = hf_tokenizer(ckpt)
    text = conversation_v1("What color <im_patch> is the shape? 😀").split(IMAGE_TAG)[0] + " </s> x"
    dirs = [str(ckpt), str(saved(hf, tmp_path / "tokenizer", ckpt))]
    run = subprocess.run([sys.executable, "-c", _BLOCKED, json.dumps([[d, text] for d in dirs])],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr
    ids = hf(text).input_ids
    expected = [ids, hf.decode(ids, skip_special_tokens=True), len(hf), hf.bos_token_id, hf.eos_token_id]
    assert json.loads(run.stdout) == {d: expected for d in dirs}
