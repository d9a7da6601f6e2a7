"""LoRA / DoRA on the tiny Qwen2-VL: what trains, what a step changes, merging, saving, config errors."""

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

from ssame.config import load_params
from ssame.model import Embedder, InputBuilder
from ssame.model.lora import apply_lora, merge_lora

TEXTS = ["<|image_1|> Represent the given image.", "a red square", "<|image_1|> what colour is the square?"]
IMAGES = ["img0.png", "", "img1.png"]
ADAPTER = ("lora_A", "lora_B", "lora_magnitude_vector")


@pytest.fixture(scope="module")
def lora_cfg(repo) -> dict:
    """The paper's `model.lora` block (r 8, alpha 64, dropout 0.1, all seven projections)."""
    return dict(load_params(repo / "params" / "paper.yaml")["model"]["lora"])


@pytest.fixture
def batch(tokenizer, tiny_stack, image_dir):
    return InputBuilder(tokenizer, tiny_stack[1], image_dir, max_text_tokens=16)(TEXTS, IMAGES)


def _backbone(tiny_stack) -> Qwen2VLForConditionalGeneration:
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(tiny_stack[0])


def _hidden(backbone: Qwen2VLForConditionalGeneration, batch) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return backbone.model(**batch.inputs, use_cache=False, output_hidden_states=True).hidden_states


def _train_step(peft_model, batch) -> float:
    """One AdamW step over ALL parameters (as the recipe does) on an InfoNCE-like loss through the Embedder."""
    baseline = {"feature_regen": False, "attn_loss_weight": 0.0, "subject_loss_weight": 0.0}
    embedder = Embedder(peft_model.get_base_model(), baseline,
                        mrope="grouped").train()
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=1e-2, weight_decay=0.01)
    emb = embedder(batch).embeddings
    loss = torch.logsumexp(emb @ emb.T / 0.1, dim=-1).mean() - (emb[0] @ emb[2]) / 0.1
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("use_dora", [False, True])
def test_only_language_model_adapters_train(tiny_stack, lora_cfg, use_dora):
    backbone = _backbone(tiny_stack)
    # a decoy in the vision tower named like a target: it must stay unwrapped
    backbone.model.visual.blocks[0].mlp.gate_proj = nn.Linear(32, 32)
    targets = set(lora_cfg["target_modules"])
    lm_linears = [m for n, m in backbone.model.language_model.named_modules()
                  if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    r = lora_cfg["r"]
    expected = sum(r * (m.in_features + m.out_features) + use_dora * m.out_features for m in lm_linears)

    model = apply_lora(backbone, {**lora_cfg, "use_dora": use_dora})
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(any(k in n for k in ADAPTER) for n in trainable), trainable.keys()
    assert not any(".visual." in n for n in trainable)
    assert sum(trainable.values()) == expected
    assert len(trainable) == len(lm_linears) * (3 if use_dora else 2) == 14 * (3 if use_dora else 2)
    assert any("lora_magnitude_vector" in n for n in trainable) == use_dora
    assert not any(isinstance(m, BaseTunerLayer) for m in backbone.model.visual.modules())
    assert sum(isinstance(m, BaseTunerLayer) for m in backbone.model.language_model.modules()) == len(lm_linears)


@pytest.mark.parametrize("use_dora", [False, True])
def test_training_step_changes_only_adapters(tiny_stack, lora_cfg, batch, use_dora):
    model = apply_lora(_backbone(tiny_stack), {**lora_cfg, "use_dora": use_dora})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = _train_step(model, batch)
    assert loss != 0.0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    lora_b = {n for n in before if "lora_B" in n}
    assert len(lora_b) == 14 and lora_b <= changed  # B gets a gradient even at its zero init
    assert all(any(k in n for k in ADAPTER) for n in changed), changed - lora_b


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_matches_adapter_model_and_saves_plain(tiny_stack, lora_cfg, batch, tmp_path, use_dora):
    backbone = _backbone(tiny_stack)
    plain = _hidden(backbone, batch)
    model = apply_lora(backbone, {**lora_cfg, "use_dora": use_dora})
    _train_step(model, batch)
    model.eval()
    adapted = _hidden(model.get_base_model(), batch)
    assert (adapted[-1] - plain[-1]).abs().max() > 1e-3  # the step made the adapters matter

    merged = merge_lora(model)
    assert type(merged) is Qwen2VLForConditionalGeneration
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    for a, b in zip(adapted, _hidden(merged, batch), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)

    merged.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]
    reloaded = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for a, b in zip(adapted, _hidden(reloaded, batch), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [["q_proj", "qproj"], ["qkv"], []])
def test_bad_target_modules_raise(tiny_stack, lora_cfg, targets):
    # "qkv" exists only in the vision tower: it must not count as a match
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules"):
        apply_lora(_backbone(tiny_stack), {**lora_cfg, "target_modules": targets})
