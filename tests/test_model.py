import numpy as np
import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from ssame.model import Embedder, InputBuilder
from ssame.model.backbone import tiny_config

TEXTS = ["<|image_1|> Represent the given image.", "a red square", "<|image_1|> what colour is the square?"]
IMAGES = ["img0.png", "", "img1.png"]


class FakeStore:
    def map(self, image_path, grid, text=None):
        sal = np.zeros(grid, dtype=np.float32)
        sal[0, :] = 1.0
        return sal


@pytest.fixture
def builder(tokenizer, tiny_stack, image_dir):
    return InputBuilder(tokenizer, tiny_stack[1], image_dir, max_text_tokens=16)


def _embedder(tiny_stack, **variant):
    torch.manual_seed(0)
    backbone = Qwen2VLForConditionalGeneration(tiny_stack[0])
    return Embedder(backbone, {"feature_regen": False, "attn_loss_weight": 0.0, **variant}).eval()


def test_inputs_expand_one_pad_per_merged_token(builder, tokenizer):
    batch = builder(TEXTS, IMAGES)
    pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_row = (batch.inputs["input_ids"] == pad_id).sum(1).tolist()
    assert batch.grids == [(6, 6), (6, 6)]
    assert per_row == [36, 0, 36] and batch.image_rows == [0, 2]
    assert torch.equal(batch.inputs["mm_token_type_ids"].bool(), batch.inputs["input_ids"] == pad_id)
    assert batch.saliency is None


def test_inputs_bad_input_errors(builder, image_dir):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        builder(["x"], ["missing.png"])
    (image_dir / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        builder(["x"], ["broken.png"])
    with pytest.raises(ValueError, match="no image path"):
        builder(["<|image_1|> hi"], [""])
    with pytest.raises(ValueError, match="neither text nor image"):
        builder(["  "], [""])


def test_tiny_config_rejects_bad_mrope(default_params, tokenizer):
    tiny = {**default_params["model"]["tiny"], "text": {**default_params["model"]["tiny"]["text"],
                                                        "mrope_section": [1, 1, 1]}}
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_config(tiny, tokenizer, "eager")


def test_embeddings_unit_norm_and_attention_on_visual_tokens(builder, tiny_stack):
    out = _embedder(tiny_stack)(builder(TEXTS, IMAGES), with_attention=True)
    assert out.embeddings.shape == (3, tiny_stack[0].text_config.hidden_size)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert [a.shape[0] for a in out.visual_attention] == [36, 36]
    assert all(0 < a.sum() <= 1 + 1e-5 for a in out.visual_attention)


def test_image_changes_the_embedding(builder, tiny_stack):
    embedder = _embedder(tiny_stack)
    a = embedder(builder([TEXTS[0]], ["img0.png"])).embeddings
    b = embedder(builder([TEXTS[0]], ["img2.png"])).embeddings
    assert not torch.allclose(a, b)


def test_regeneration_uses_the_saliency(builder, tiny_stack):
    plain = _embedder(tiny_stack)(builder(TEXTS, IMAGES)).embeddings
    regen = _embedder(tiny_stack, feature_regen=True)
    with pytest.raises(ValueError, match="needs saliency"):
        regen(builder(TEXTS, IMAGES))
    out = regen(builder(TEXTS, IMAGES, FakeStore())).embeddings
    assert torch.allclose(out[1], plain[1], atol=1e-6)  # text-only row untouched
    assert not torch.allclose(out[0], plain[0])


def test_save_load_roundtrip(tmp_path, builder, tiny_stack, tokenizer):
    embedder = _embedder(tiny_stack, feature_regen=True)
    with torch.no_grad():
        embedder.regen.delta.fill_(0.3)
    batch = builder(TEXTS, IMAGES, FakeStore())
    before = embedder(batch).embeddings
    embedder.save(tmp_path / "model", tokenizer, tiny_stack[1])
    assert (tmp_path / "model" / "backbone" / "model.safetensors").is_file()
    loaded, tok, proc = Embedder.load(tmp_path / "model")
    rebuilt = InputBuilder(tok, proc, builder.image_root, 16)(TEXTS, IMAGES, FakeStore())
    assert torch.equal(rebuilt.inputs["input_ids"], batch.inputs["input_ids"])
    assert torch.allclose(loaded.eval()(rebuilt).embeddings, before, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not an ssame model folder"):
        Embedder.load(tmp_path)


def test_image_cache_gives_identical_inputs(tokenizer, tiny_stack, image_dir):
    plain = InputBuilder(tokenizer, tiny_stack[1], image_dir, 16)(TEXTS, IMAGES)
    cached_builder = InputBuilder(tokenizer, tiny_stack[1], image_dir, 16, cache_images=True)
    cached_builder(["<|image_1|> warm"], ["img1.png"])
    cached = cached_builder(TEXTS, IMAGES)
    for key, value in plain.inputs.items():
        assert torch.equal(value, cached.inputs[key]), key
