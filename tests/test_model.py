import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from ssame.config import load_params
from ssame.model import Embedder, InputBuilder
from ssame.model.backbone import tiny_config
from ssame.model.inputs import ImageDecodeError

TEXTS = ["<|image_1|> Represent the given image.", "a red square", "<|image_1|> what colour is the square?"]
IMAGES = ["img0.png", "", "img1.png"]

# The default tiny backbone's merged grid of a 96 x 96 image: 96 / (patch_size x spatial_merge_size) per side.
_VISION = load_params(Path(__file__).parents[1] / "params" / "default.yaml")["model"]["tiny"]["vision"]
SIDE = 96 // (_VISION["patch_size"] * _VISION["spatial_merge_size"])
TOKENS = SIDE * SIDE


class FakeStore:
    def map(self, image_path, grid, text=None):
        sal = np.zeros(grid, dtype=np.float32)
        sal[0, :] = 1.0
        return sal


@pytest.fixture
def builder(tokenizer, tiny_stack, image_dir):
    return InputBuilder(tokenizer, tiny_stack[1], image_dir, max_text_tokens=16)


def _embedder(tiny_stack, mrope="grouped", **variant):
    torch.manual_seed(0)
    backbone = Qwen2VLForConditionalGeneration(tiny_stack[0])
    variant = {"feature_regen": False, "attn_loss_weight": 0.0, "subject_loss_weight": 0.0, **variant}
    return Embedder(backbone, variant, mrope=mrope).eval()


def test_inputs_expand_one_pad_per_merged_token(builder, tokenizer):
    batch = builder(TEXTS, IMAGES)
    pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_row = (batch.inputs["input_ids"] == pad_id).sum(1).tolist()
    assert batch.grids == [(SIDE, SIDE), (SIDE, SIDE)]
    assert per_row == [TOKENS, 0, TOKENS] and batch.image_rows == [0, 2]
    assert torch.equal(batch.inputs["mm_token_type_ids"].bool(), batch.inputs["input_ids"] == pad_id)
    assert batch.saliency is None


def test_inputs_bad_input_errors(builder, image_dir):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        builder(["x"], ["missing.png"])
    (image_dir / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        builder(["x"], ["broken.png"])
    with pytest.raises(ImageDecodeError) as caught:
        builder(["x"], ["broken.png"])
    assert caught.value.path == "broken.png"  # relative, so evaluation can name the dataset row
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
    assert [a.shape[0] for a in out.visual_attention] == [TOKENS, TOKENS]
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
    loaded, tok, proc = Embedder.load(tmp_path / "model", mrope="grouped")
    rebuilt = InputBuilder(tok, proc, builder.image_root, 16)(TEXTS, IMAGES, FakeStore())
    assert torch.equal(rebuilt.inputs["input_ids"], batch.inputs["input_ids"])
    assert torch.allclose(loaded.eval()(rebuilt).embeddings, before, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not an ssame model folder"):
        Embedder.load(tmp_path, mrope="grouped")


# --- position ids: model.mrope ---------------------------------------------------------------------------------------

MIXED = (["a red <|image_1|>\nwhat colour?\n", "a red square\n", "<|image_1|>\nRepresent the given image.\n"],
         ["img0.png", "", "img1.png"])


def _positions(embedder, batch) -> torch.Tensor:
    """The position ids the Qwen2-VL text model receives for `batch`."""
    seen = {}
    hook = embedder.qwen.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(pos=kwargs["position_ids"]), with_kwargs=True)
    with torch.no_grad():
        embedder(batch)
    hook.remove()
    return seen["pos"]


def _old_encode(embedder, batch) -> torch.Tensor:
    """The embeddings as the Embedder computed them before `model.mrope` existed: the core derives the positions."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs, core = batch.inputs, embedder.qwen.model
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "pixel_values" in inputs:
        feats = core.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        if embedder.regen is not None:
            feats = tuple(embedder.regen(f, torch.as_tensor(s.ravel())) for f, s in zip(feats, batch.saliency,
                                                                                        strict=True))
        kwargs |= {"image_grid_thw": inputs["image_grid_thw"],
                   "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=feats)}}
    with torch.no_grad():
        out = core(**kwargs, use_cache=False)
    return torch.nn.functional.normalize(out.last_hidden_state[:, -1].float(), dim=-1)


@pytest.mark.parametrize("regen", [False, True])
def test_grouped_reproduces_the_previous_outputs_exactly(builder, tiny_stack, regen):
    embedder = _embedder(tiny_stack, feature_regen=regen)
    if regen:
        with torch.no_grad():
            embedder.regen.delta.fill_(0.3)
    for texts, images in (MIXED, (["a red square\n", "what colour is the square?"], ["", ""])):
        batch = builder(texts, images, FakeStore() if regen else None)
        with torch.no_grad():
            new = embedder(batch).embeddings
        assert torch.equal(new, _old_encode(embedder, batch))


def test_vlm2vec_1d_gives_every_token_its_1d_place(builder, tiny_stack):
    batch = builder(*MIXED)
    mask = batch.inputs["attention_mask"].bool()
    pos = _positions(_embedder(tiny_stack, mrope="vlm2vec_1d"), batch)
    assert pos.shape == (3, *mask.shape) and torch.equal(pos[0], pos[1]) and torch.equal(pos[0], pos[2])
    for row in range(mask.shape[0]):  # 0, 1, 2, ... over the unpadded tokens, image tokens included
        assert torch.equal(pos[0, row][mask[row]], torch.arange(int(mask[row].sum())))
    grouped = _positions(_embedder(tiny_stack, mrope="grouped"), batch)
    visual = batch.inputs["mm_token_type_ids"][0].bool()
    assert not torch.equal(grouped[1, 0][visual], grouped[2, 0][visual])  # 3-D: rows and columns of the grid


def test_vlm2vec_1d_embedding_ignores_left_padding(builder, tiny_stack):
    """VLM2Vec's copy hands later batches 0..L-1 including the padding: a per-row shift RoPE cancels."""
    embedder = _embedder(tiny_stack, mrope="vlm2vec_1d")
    with torch.no_grad():
        alone = embedder(builder(MIXED[0][1:2], MIXED[1][1:2])).embeddings
        padded = embedder(builder(*MIXED)).embeddings[1:2]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_placeholder_without_image_is_a_literal_text_token_in_a_mixed_batch(builder, tiny_stack, tokenizer):
    """MMEB's WebQA queries hold `<|image_1|>` but no image: VLM2Vec keeps one unexpanded `<|image_pad|>`."""
    texts = ["<|image_1|>\nFind a Wikipedia image that answers this question: why?\n", MIXED[0][2]]
    batch = builder(texts, ["", "img1.png"])
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch.inputs["input_ids"][0] == pad).sum() == 1 and not batch.inputs["mm_token_type_ids"][0].any()
    for mrope in ("grouped", "vlm2vec_1d"):
        out = _embedder(tiny_stack, mrope=mrope)(batch, with_attention=True)
        assert torch.isfinite(out.embeddings).all() and [a.shape[0] for a in out.visual_attention] == [TOKENS]


def test_mrope_is_recorded_with_the_model(tmp_path, tiny_stack, tokenizer):
    _embedder(tiny_stack, mrope="vlm2vec_1d").save(tmp_path / "model", tokenizer, tiny_stack[1])
    assert Embedder.load(tmp_path / "model", mrope="vlm2vec_1d")[0].mrope == "vlm2vec_1d"
    with pytest.raises(ValueError, match="trained with mrope 'vlm2vec_1d'"):
        Embedder.load(tmp_path / "model", mrope="grouped")
    with pytest.raises(ValueError, match="mrope must be one of"):
        _embedder(tiny_stack, mrope="3d")


# ---- MIRe: fusion-free alignment (variant key `fusion: isolated`) --------------------------------------------------

MIRE_TEXT = ["what colour is the square? <|image_1|> answer in one word"]  # text before and after the image


@pytest.mark.parametrize("fusion", ["joint", "isolated"])
def test_isolated_visual_states_get_no_gradient_through_text(builder, tiny_stack, fusion):
    """Under `isolated` no text token reaches a visual token's final hidden state (zero gradient into every token
    embedding), while the pooled text token still reads the image; under `joint` the text before the image does."""
    embedder = _embedder(tiny_stack, fusion=fusion).train()
    batch = builder(MIRE_TEXT, ["img0.png"])
    table = embedder.qwen.model.get_input_embeddings().weight
    out = embedder(batch, with_hidden=True)
    (from_visual,) = torch.autograd.grad(out.visual_hidden[0].sum(), table, retain_graph=True)
    text_ids = batch.inputs["input_ids"][0][~batch.inputs["mm_token_type_ids"][0].bool()].unique()
    if fusion == "isolated":
        assert from_visual.abs().sum() == 0
    else:
        assert from_visual[text_ids].abs().sum() > 0
    patches = embedder.qwen.model.visual.patch_embed.proj.weight
    (from_pooled,) = torch.autograd.grad(out.embeddings.sum(), patches)
    assert from_pooled.abs().sum() > 0  # text -> visual attention stays


def test_isolated_equals_joint_where_no_image_is(builder, tiny_stack):
    batch = builder(["a red square", "what colour is the big square on the left?"], ["", ""])  # left padding
    joint = _embedder(tiny_stack)(batch).embeddings
    isolated = _embedder(tiny_stack, fusion="isolated")(batch).embeddings
    torch.testing.assert_close(isolated, joint, rtol=0, atol=1e-6)


def test_isolated_mask_by_hand():
    from ssame.model.embedder import isolated_visual_mask

    padding = torch.tensor([[0, 1, 1, 1, 1]])
    visual = torch.tensor([[False, False, True, True, False]])  # pad, text, image, image, text
    allowed = isolated_visual_mask(padding, visual, torch.float32)[0, 0] == 0
    expected = torch.tensor([[0, 0, 0, 0, 0],   # a padded query sees nothing
                             [0, 1, 0, 0, 0],   # text: itself
                             [0, 0, 1, 0, 0],   # image: not the text before it
                             [0, 0, 1, 1, 0],
                             [0, 1, 1, 1, 1]], dtype=torch.bool)  # text after: everything before it
    assert torch.equal(allowed, expected)


def test_isolated_fusion_refuses_flash_attention(default_params):
    from ssame.config import ParamsError, as_params

    params = copy.deepcopy(default_params)
    params["variants"]["mire"] = {"feature_regen": False, "attn_loss_weight": 0.0, "subject_loss_weight": 0.0,
                                  "fusion": "isolated"}
    params["model"]["attn_implementation"] = "flash_attention_2"
    with pytest.raises(ParamsError, match="flash_attention_2"):
        as_params(params)
