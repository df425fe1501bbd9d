"""Golden data: each image's reference embeddings are computed once, however many questions ask about it, and are
the same as a pass of their own."""

import pytest
import torch

from mobilevlm_export.golden_writer import demo_pairs, make_golden


@pytest.mark.parametrize("kv,max_batch", [("static", 1), ("dynamic", 2)])
def test_each_image_goes_through_the_vision_tower_once(tiny_loaded, monkeypatch, kv, max_batch):
    pairs = demo_pairs()
    images = {p.image.resolve() for p in pairs}
    assert len(images) < len(pairs)  # (the demo asks two questions about each image)
    model = tiny_loaded.model
    batches: list[int] = []
    real = type(model).image_features

    def counted(self, pixel_values):
        batches.append(pixel_values.shape[0])
        return real(self, pixel_values)

    monkeypatch.setattr(type(model), "image_features", counted)
    arrays, e2e = make_golden(tiny_loaded, pairs, True, 2, kv=kv, max_batch=max_batch)
    # the batch case, then each image not in a batch of one that the batch case already computed
    first = 1 if kv == "static" else 2
    assert batches == [first] + [1] * (len(images) - (1 if first == 1 else 0))
    assert len(e2e) == len(pairs)
    if kv == "static":  # the first image's pairs use the batch case's embeddings: those of a pass of its own
        with torch.inference_mode():
            own = model.projector(real(model, torch.from_numpy(arrays["e2e/0/pixel_values"])[None]))
        assert torch.equal(own, torch.from_numpy(arrays["image_encoder/batch/out/image_embeds"]))


def test_verify_runs_each_image_through_the_image_graphs_once(demo_build_onnx, monkeypatch):
    """`verify`'s end-to-end pairs: an image's embeddings from the build's graphs once, reused for every question
    about it; the same tokens as generating each pair on its own."""
    from mobilevlm_export.generation import SamplingParams
    from mobilevlm_export.runtime.artifacts import open_artifacts
    from mobilevlm_export.runtime.generator import VLMGenerator
    from mobilevlm_export.runtime.golden_reader import load_golden
    from mobilevlm_export.verify import verify_e2e

    art = open_artifacts(demo_build_onnx)
    golden, e2e = load_golden(art.root)
    pipe = art.generator()
    calls = []
    real = VLMGenerator.image_embeds
    monkeypatch.setattr(VLMGenerator, "image_embeds", lambda self, px: calls.append(px.shape) or real(self, px))
    n = art.recipe.e2e.max_new_tokens
    results = verify_e2e(pipe, golden, e2e, n)
    assert len(calls) == len({item["image"] for item in e2e}) < len(e2e)
    for i, (item, r) in enumerate(zip(e2e, results, strict=True)):
        alone, _ = pipe.generate_ids(item["prompt_ids"], golden[f"e2e/{i}/pixel_values"],
                                     SamplingParams(max_new_tokens=max(n, len(item["reference_ids"]))))
        assert r.ids == alone
