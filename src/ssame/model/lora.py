"""LoRA / DoRA adapters (peft) on the language model of a Qwen2-VL backbone; merge them back for saving.

`apply_lora` returns a `peft.PeftModel`. The adapters are injected in place, so callers that need the Qwen2-VL
model itself (the `Embedder`: `backbone.model.get_image_features`, `backbone.model(...)`, `backbone.config`) take
`peft_model.get_base_model()`: the same `Qwen2VLForConditionalGeneration` object, now carrying the adapter layers.
Do not use `peft_model.model` for that: peft forwards it to `Qwen2VLForConditionalGeneration`, not to the inner
`Qwen2VLModel`, so `peft_model.model(...)` returns logits instead of `last_hidden_state`.
"""

from __future__ import annotations

import re
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

CFG_KEY = "model.lora"


def _language_model_prefix(backbone: Qwen2VLForConditionalGeneration) -> str:
    """Dotted module path of the language model inside `backbone` (e.g. `model.language_model`)."""
    target = backbone.model.language_model
    for name, module in backbone.named_modules():
        if module is target:
            return name
    raise ValueError("backbone has no `model.language_model` module")


def target_regex(backbone: Qwen2VLForConditionalGeneration, target_modules: list[str]) -> str:
    """A peft `target_modules` regex (full match) selecting the named linear layers of the language model only.

    Raises ValueError naming `model.lora.target_modules` when the list is empty or a name matches no linear layer
    of the language model (the vision tower is never searched, nor wrapped).
    """
    if not target_modules:
        raise ValueError(f"{CFG_KEY}.target_modules is empty")
    lm = backbone.model.language_model
    linear_names = {name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(target_modules) - linear_names)
    if missing:
        raise ValueError(f"{CFG_KEY}.target_modules {missing} match no linear layer of the language model "
                         f"(its linear layers: {sorted(linear_names)})")
    names = "|".join(re.escape(t) for t in target_modules)
    return rf"{re.escape(_language_model_prefix(backbone))}\..*\.(?:{names})"


def apply_lora(backbone: Qwen2VLForConditionalGeneration, cfg: dict[str, Any]) -> PeftModel:
    """Wrap the language model's `cfg["target_modules"]` linear layers with LoRA (DoRA if `cfg["use_dora"]`).

    `cfg` is params `model.lora`: r, alpha, dropout, target_modules, use_dora. Every base weight,
    the vision tower included, is frozen; only the adapter weights train. Modifies `backbone` in place; reach the
    Qwen2-VL model through `peft_model.get_base_model()` (see the module docstring).
    """
    config = LoraConfig(
        r=int(cfg["r"]), lora_alpha=cfg["alpha"], lora_dropout=float(cfg["dropout"]),
        target_modules=target_regex(backbone, list(cfg["target_modules"])),
        use_dora=bool(cfg["use_dora"]), bias="none",
    )
    return get_peft_model(backbone, config)


def merge_lora(model: PeftModel) -> Qwen2VLForConditionalGeneration:
    """Merge the adapters into the base weights and return the plain transformers model.

    In place: the returned model is `model.get_base_model()` with each adapter layer replaced by its merged
    `nn.Linear`, so `save_pretrained` writes the ordinary Qwen2-VL keys; `model` must not be trained further.
    """
    merged = model.merge_and_unload()
    if not isinstance(merged, Qwen2VLForConditionalGeneration):
        raise TypeError(f"expected a Qwen2VLForConditionalGeneration after merging, got {type(merged).__name__}")
    return merged
