"""A built directory opened for running, verifying and benchmarking, without the checkpoint and without torch.

Layout: ``manifest.json``, the target's artifacts (``graphs/<graph>.onnx``, ``model.pte``, ...), ``tokenizer/``,
``golden/golden.npz`` + ``golden/e2e.json``. The manifest's ``target`` names the registered target whose
``open_runners`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.manifest import MANIFEST, TOKENIZER_DIR, read_manifest
from mobilevlm_export.profiles import DeviceProfile
from mobilevlm_export.recipes import Recipe, parse_recipe
from mobilevlm_export.runtime.generator import VLMGenerator
from mobilevlm_export.runtime.preprocess import ImagePreprocess, load_image
from mobilevlm_export.runtime.prompt import build_prompt_ids, decode_text
from mobilevlm_export.runtime.sessions import BoundKVSession, StaticKVSession
from mobilevlm_export.schema import short_json
from mobilevlm_export.targets import Target, find_target, registry


@dataclass
class ArtifactSet:
    root: Path
    manifest: dict
    backend: str | None = None  # the runtime to run on (None: the target's choice, see ``Target.open_runners``)
    _tokenizer: object = field(default=None, repr=False)

    @cached_property
    def target(self) -> Target:
        return registered_target(self.manifest, self.root)

    @cached_property
    def recipe(self) -> Recipe:
        """The build's recipe (its manifest's copy), parsed for its target once."""
        return parse_recipe(self.manifest["recipe"], f"{self.root / MANIFEST} (recipe)", self.target)

    @property
    def profile(self) -> DeviceProfile | None:
        """The device profile DIR was built for (its manifest's copy), or None."""
        data = self.manifest.get("profile")
        return None if data is None else DeviceProfile.from_dict(data, source=f"{self.root / MANIFEST} (profile)")

    @property
    def preprocess(self) -> ImagePreprocess:
        return ImagePreprocess.from_dict(self.manifest["model"]["preprocess"])

    @property
    def passed(self) -> bool | None:
        """Whether the build's own parity check passed (None: not recorded)."""
        return (self.manifest.get("verification") or {}).get("passed")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from mobilevlm_export.runtime.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_dir(self.root / TOKENIZER_DIR)
            check_tokenizer_fits(tokenizer, self.root / TOKENIZER_DIR, self.manifest["model"]["dims"]["vocab"])
            self._tokenizer = tokenizer
        return self._tokenizer

    def bench_notes(self) -> list[str]:
        """The target's notes on how far a measurement of this build in this process can be trusted."""
        return self.target.bench_notes(self.manifest)

    def runners(self, threads: int | None = None) -> dict:
        return self.target.open_runners(self.root, self.manifest["graphs"], threads, self.backend)

    def generator(self, runners: dict | None = None) -> VLMGenerator:
        runners = runners if runners is not None else self.runners()
        model = self.manifest["model"]
        decoder = runners["decoder"]
        ranges = decoder.contract.ranges
        if decoder.contract.state:  # static KV cache (ExecuTorch): prefill and decode up to the cache's length
            session = StaticKVSession(decoder, ranges["seq"].max)
        else:  # dynamic KV (ONNX Runtime, TensorRT): the cache stays in the backend's buffers
            options = self.manifest["recipe"].get(self.target.recipe_section or "", {})
            key = f"{self.target.recipe_section}.max_prompt" if "max_prompt" in options else None
            session = BoundKVSession(decoder, model["dims"]["layers"], ranges["past"].max + 1, ranges["seq"].max,
                                     key)
        return VLMGenerator(runners, session, model["eos_token_id"], model["dims"]["vocab"])


def check_tokenizer_fits(tokenizer, directory: Path, vocab: int) -> None:
    """``UserError`` naming the tokenizer's file and both numbers when ``tokenizer`` has more tokens than the model's
    vocabulary (``vocab``, the manifest's ``model.dims.vocab``): its extra ids would index past the embedding."""
    if len(tokenizer) > vocab:
        file = next((directory / f for f in ("tokenizer.json", "tokenizer_config.json") if (directory / f).is_file()),
                    directory)
        raise UserError(f"{file}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                        f"{vocab} ({MANIFEST} model.dims.vocab); ids past {vocab - 1} have no embedding (a tokenizer "
                        "of another model?)")


def open_artifacts(root: str | Path, backend: str | None = None) -> ArtifactSet:
    """Read and check DIR: the manifest's form, every file the runtime opens inside DIR and listed in the
    manifest's artifacts, every artifact's sha256 (``manifest.read_manifest``). ``UserError`` naming the file and
    key when missing, malformed or corrupt. ``backend``: the runtime to run it on (``--backend``)."""
    root = Path(root)
    art = ArtifactSet(root, read_manifest(root), backend)
    art.recipe  # noqa: B018  (its target registered here, its recipe valid for it: refused now, not mid-run)
    return art


def registered_target(manifest: dict, root: Path) -> Target:
    """The registered target a manifest names; ``UserError`` naming DIR/manifest.json's ``target`` otherwise (a
    build of a target whose plugin is not installed here, or a manifest edited by hand)."""
    target = find_target(manifest.get("target"))
    if target is None:
        raise UserError(f"{Path(root) / MANIFEST}: target must be a registered target ({', '.join(registry())}) (is "
                        f"{short_json(manifest.get('target'))})")
    return target


def device_build(root: str | Path, log=print, record_only: bool = False) -> list[dict]:
    """The on-device step of DIR's target (``trt-build``: an orin bundle's TensorRT engines), built or recorded in
    its manifest. ``UserError`` for a build whose target has none."""
    root = Path(root)
    manifest = read_manifest(root, check=False)
    target = registered_target(manifest, root)
    step = getattr(target, "device_build", None)
    if step is None:
        able = [t.name for t in registry().values() if hasattr(t, "device_build")]
        raise UserError(f"{root}: is a {target.name} build, not an {' or '.join(able)} bundle (build --target "
                        f"{able[0] if able else '...'})")
    return step(root, log, record_only)


def answer(art: ArtifactSet, image: str | Path, prompt: str, params: SamplingParams = SamplingParams(),
           raw_prompt: bool = False, threads: int | None = None) -> dict:
    """Answer ``prompt`` about ``image`` with the artifacts only."""
    img = load_image(image)
    ids = build_prompt_ids(art.tokenizer, prompt, raw_prompt)
    runners = art.runners(threads)
    out, timings = art.generator(runners).generate_ids(ids, art.preprocess(img), params)
    return {"backend": runners["decoder"].backend, "prompt_ids": ids, "output_ids": out,
            "text": decode_text(art.tokenizer, out, art.manifest["model"]["eos_token_id"]),
            "timings": timings.to_dict()}

