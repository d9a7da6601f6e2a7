"""The fused last-row attention path against eager and plain SDPA, on the tiny Qwen2-VL (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface, Qwen2VLForConditionalGeneration
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ssame.model.attention import (
    LAST_ROW_SDPA,
    attention_implementation,
    register_last_row_attention,
    sdpa_last_row_attention_forward,
)
from ssame.model.inputs import InputBuilder

TEXTS = ["a red circle", "what colour is the square on the left of the red circle?", "square"]
FUSED = attention_implementation("sdpa", needs_weights=True)


@pytest.fixture(scope="module")
def models(tiny_stack) -> dict[str, Qwen2VLForConditionalGeneration]:
    """The same random weights under eager, plain sdpa and the fused last-row implementation."""
    torch.manual_seed(0)
    eager = Qwen2VLForConditionalGeneration(copy.deepcopy(tiny_stack[0])).eval()
    out = {"eager": eager}
    for name, impl in [("sdpa", "sdpa"), ("fused", FUSED)]:
        out[name] = copy.deepcopy(eager)
        out[name].set_attn_implementation(impl)
    return out


def text_inputs(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "mm_token_type_ids": torch.zeros_like(enc["input_ids"])}


def image_inputs(tokenizer, image_processor, image_dir) -> dict[str, torch.Tensor]:
    builder = InputBuilder(tokenizer, image_processor, image_dir, max_text_tokens=32)
    return builder(["<|image_1|> a red square", TEXTS[1], "<|image_1|>"], ["img0.png", "", "img2.png"]).inputs


@pytest.fixture(params=["text", "image"])
def inputs(request, tokenizer, tiny_stack, image_dir) -> dict[str, torch.Tensor]:
    """A left-padded batch of 3 (rows of different lengths), text-only or with two images."""
    out = text_inputs(tokenizer) if request.param == "text" else image_inputs(tokenizer, tiny_stack[1], image_dir)
    mask = out["attention_mask"]
    assert tokenizer.padding_side == "left" and (mask[:, 0] == 0).any() and mask[:, -1].all()
    return out


def run(model, inputs, **kwargs):
    return model.model(**inputs, use_cache=False, **kwargs)


def test_registration_is_idempotent():
    assert register_last_row_attention() == register_last_row_attention() == LAST_ROW_SDPA
    assert AttentionInterface()[LAST_ROW_SDPA] is sdpa_last_row_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS[LAST_ROW_SDPA] is sdpa_mask  # else the layers get no padding mask at all


def test_attention_implementation_mapping():
    assert attention_implementation("eager", True) == "eager"
    assert attention_implementation("sdpa", False) == "sdpa"
    assert attention_implementation("flash_attention_2", False) == "flash_attention_2"
    assert FUSED == {"": "sdpa", "text_config": LAST_ROW_SDPA, "vision_config": "sdpa"}
    assert attention_implementation("flash_attention_2", True)["vision_config"] == "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        attention_implementation("flex_attention", True)


def test_implementation_is_set_per_submodel(tiny_stack, tmp_path, models):
    def check(model):
        assert model.config.text_config._attn_implementation == LAST_ROW_SDPA
        assert model.model.language_model.config._attn_implementation == LAST_ROW_SDPA
        assert model.config.vision_config._attn_implementation == "sdpa"
        assert model.model.visual.config._attn_implementation == "sdpa"

    check(models["fused"])                                                   # set_attn_implementation
    config = copy.deepcopy(tiny_stack[0])
    config._attn_implementation = FUSED                                      # config (tiny backbones)
    check(Qwen2VLForConditionalGeneration(config))
    models["eager"].save_pretrained(tmp_path)                                # from_pretrained (hub backbones)
    check(Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=FUSED))


def test_last_row_weights_equal_eager(models, inputs):
    with torch.no_grad():
        eager = run(models["eager"], inputs, output_attentions=True).attentions
        fused = run(models["fused"], inputs, output_attentions=True).attentions
    config = models["eager"].config.text_config
    batch, length = inputs["input_ids"].shape
    assert len(fused) == len(eager) == config.num_hidden_layers
    padding = inputs["attention_mask"] == 0
    for layer, (ref, got) in enumerate(zip(eager, fused, strict=True)):
        assert got.shape == (batch, config.num_attention_heads, 1, length), layer
        torch.testing.assert_close(got[:, :, -1, :], ref[:, :, -1, :], atol=1e-5, rtol=0, msg=f"layer {layer}")
        assert got[:, :, -1, :].permute(0, 2, 1)[padding].abs().max() == 0, layer  # padding gets no attention
    last = torch.stack([a[:, :, -1, :] for a in fused]).mean(dim=(0, 2))  # what the embedder reads
    assert last.shape == (batch, length)


def test_hidden_states_equal_sdpa(models, inputs):
    with torch.no_grad():
        sdpa = run(models["sdpa"], inputs).last_hidden_state
        fused_out = run(models["fused"], inputs, output_attentions=True)
        plain = run(models["fused"], inputs)
        eager = run(models["eager"], inputs).last_hidden_state
    assert plain.attentions is None  # weights only when asked for
    torch.testing.assert_close(fused_out.last_hidden_state, sdpa, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.last_hidden_state, sdpa, atol=1e-5, rtol=0)
    real = inputs["attention_mask"].bool()  # padded query rows differ between eager and sdpa by design
    torch.testing.assert_close(fused_out.last_hidden_state[real], eager[real], atol=1e-5, rtol=1e-4)


def attention_loss_grads(model, inputs, checkpointing: bool = False) -> list[torch.Tensor]:
    """Grads on every layer's q_proj of a loss on the last-row attention weights (train mode)."""
    model = copy.deepcopy(model).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    attentions = run(model, inputs, output_attentions=True).attentions
    target = torch.randn(attentions[0][:, :, -1, :].shape, generator=torch.Generator().manual_seed(1))
    loss = sum((a[:, :, -1, :] * target).sum() for a in attentions)  # weights sum to 1: a plain sum has no grad
    loss.backward()
    return [layer.self_attn.q_proj.weight.grad for layer in model.model.language_model.layers]


def test_gradients_flow_through_weights(models, tokenizer):
    inputs = text_inputs(tokenizer)
    fused = attention_loss_grads(models["fused"], inputs)
    eager = attention_loss_grads(models["eager"], inputs)
    checkpointed = attention_loss_grads(models["fused"], inputs, checkpointing=True)
    for layer, (got, ref, ckpt) in enumerate(zip(fused, eager, checkpointed, strict=True)):
        assert got is not None and torch.isfinite(got).all() and got.abs().max() > 0, layer
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4, msg=f"layer {layer} vs eager")
        torch.testing.assert_close(ckpt, got, atol=1e-6, rtol=1e-5, msg=f"layer {layer} checkpointed")
