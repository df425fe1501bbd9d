"""An artifact directory (from ``export`` or ``build``) opened for running and verifying, without the checkpoint.

Layout: ``manifest.json``, ``graphs/<graph>.<ext>``, ``tokenizer/``, ``golden/golden.npz`` + ``golden/e2e.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mobilevlm_export.checkpoint.preprocess import ImagePreprocess, load_image
from mobilevlm_export.checkpoint.reference import build_prompt_ids, decode_text
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.graphs.contracts import GraphContract, TensorSpec
from mobilevlm_export.manifest import read_manifest
from mobilevlm_export.recipes import Recipe
from mobilevlm_export.runtime.pipeline import DynamicKVSession, StaticKVSession, VLMPipeline


def contract_from_dict(d: dict) -> GraphContract:
    def specs(items):
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    return GraphContract(d["name"], specs(d["inputs"]), specs(d["outputs"]), specs(d.get("state", [])))


def load_runner(backend: str, path: Path, contract: GraphContract, threads: int | None = None,
                method: str | None = None):
    """The runner of one graph artifact (``method``: its method in a multi-method program). Backends import
    lazily: only the one in use must be installed."""
    if backend == "onnx":
        from mobilevlm_export.backends.onnx import OnnxRunner

        return OnnxRunner(path, contract, threads)
    if backend == "executorch":
        try:
            from mobilevlm_export.backends.executorch import ExecuTorchRunner
        except ImportError as exc:
            raise UserError(f"{path}: running an ExecuTorch program needs executorch==1.5.1 ({exc})") from None
        return ExecuTorchRunner(path, contract, method or contract.name, threads)
    raise UserError(f"manifest.json: unknown backend {backend!r} (known: onnx, executorch)")


@dataclass
class ArtifactSet:
    root: Path
    manifest: dict
    _tokenizer: object = field(default=None, repr=False)

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.manifest["recipe"])

    @property
    def preprocess(self) -> ImagePreprocess:
        return ImagePreprocess.from_dict(self.manifest["model"]["preprocess"])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.root / "tokenizer"))
        return self._tokenizer

    def runners(self, threads: int | None = None) -> dict:
        return {name: load_runner(self.manifest["backend"], self.root / g["file"], contract_from_dict(g["contract"]),
                                  threads, g.get("method"))
                for name, g in self.manifest["graphs"].items()}

    def pipeline(self, runners: dict | None = None) -> VLMPipeline:
        runners = runners if runners is not None else self.runners()
        model = self.manifest["model"]
        decoder = runners["decoder"]
        if decoder.contract.state:  # static KV cache (ExecuTorch)
            session = StaticKVSession(decoder, self.manifest["graphs"]["decoder"]["max_cache"])
        else:
            session = DynamicKVSession(decoder, model["dims"]["layers"], model["dims"]["max_context"])
        return VLMPipeline(runners, session, model["eos_token_id"])


def open_artifacts(root: str | Path) -> ArtifactSet:
    """Read and check DIR (every artifact's sha256). ``UserError`` when missing or corrupt."""
    root = Path(root)
    return ArtifactSet(root, read_manifest(root))


def answer(art: ArtifactSet, image: str | Path, prompt: str, params: SamplingParams = SamplingParams(),
           raw_prompt: bool = False) -> dict:
    """Answer ``prompt`` about ``image`` with the artifacts only."""
    img = load_image(image)
    ids = build_prompt_ids(art.tokenizer, prompt, raw_prompt)
    out, timings = art.pipeline().generate_ids(ids, art.preprocess(img), params)
    return {"prompt_ids": ids, "output_ids": out, "text": decode_text(art.tokenizer, out, art.manifest["model"][
        "eos_token_id"]), "timings": timings.to_dict()}
