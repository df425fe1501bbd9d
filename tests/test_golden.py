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
