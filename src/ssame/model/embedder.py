"""SSA-ME embedder: Qwen2-VL + optional feature regeneration; last-token pooling, L2-normalised."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.model.attention import attention_implementation
from ssame.model.inputs import EncodedBatch
from ssame.model.regen import FeatureRegenerator

MODULES_FILE, CONFIG_FILE = "ssame_modules.safetensors", "ssame.json"


@dataclass
class EmbedOutput:
    embeddings: torch.Tensor                 # (B, D), unit norm
    visual_attention: list[torch.Tensor]     # per image: pooled-token attention on its visual tokens (n,)
    visual_hidden: list[torch.Tensor]        # per image: last-layer hidden states of its visual tokens (n, D)


class Embedder(nn.Module):
    """Encode a batch of (text, image) inputs into one vector each."""

    def __init__(self, backbone: Qwen2VLForConditionalGeneration, variant: dict[str, Any],
                 lora: dict[str, Any] | None = None):
        """`lora` (params `model.lora`) wraps the language model in LoRA/DoRA adapters, freezing the backbone."""
        super().__init__()
        if lora:
            from ssame.model.lora import apply_lora

            backbone = apply_lora(backbone, lora)
        self.backbone = backbone
        self.variant = dict(variant)
        hidden = self.qwen.config.text_config.hidden_size
        self.regen = FeatureRegenerator(hidden) if variant["feature_regen"] else None
        self.attn_layers: list[int] = list(variant.get("attn_layers", [-1]))

    @property
    def qwen(self) -> Qwen2VLForConditionalGeneration:
        """The transformers model, under its LoRA wrapper if any."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    @property
    def uses_saliency(self) -> bool:
        return self.regen is not None

    def forward(self, batch: EncodedBatch | list[EncodedBatch], with_attention: bool = False,
                with_hidden: bool = False) -> EmbedOutput | list[EmbedOutput]:
        """Embeddings; optionally the pooled token's attention on, and the final hidden states of, each image's
        visual tokens (for the saliency-guided objectives). A list of batches is encoded batch by batch within
        one call (DDP allows one forward call per backward; separate batches avoid padding them to one length)."""
        if isinstance(batch, list):
            return [self._encode(b, with_attention, with_hidden) for b in batch]
        return self._encode(batch, with_attention, with_hidden)

    def _encode(self, batch: EncodedBatch, with_attention: bool, with_hidden: bool) -> EmbedOutput:
        inputs = batch.inputs
        core = self.qwen.model
        kwargs: dict[str, Any] = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        if "pixel_values" in inputs:
            feats = core.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
            if self.regen is not None:
                if batch.saliency is None:
                    raise ValueError("feature regeneration needs saliency maps for every image of the batch")
                feats = tuple(self.regen(f, torch.as_tensor(s.ravel(), device=f.device))
                              for f, s in zip(feats, batch.saliency, strict=True))
            kwargs["image_grid_thw"] = inputs["image_grid_thw"]
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
        out = core(**kwargs, output_attentions=with_attention, use_cache=False)
        embeddings = F.normalize(out.last_hidden_state[:, -1].float(), dim=-1)
        attention = self._visual_attention(out.attentions, batch) if with_attention else []
        is_visual = inputs["mm_token_type_ids"].bool()
        hidden = [out.last_hidden_state[r][is_visual[r]] for r in batch.image_rows] if with_hidden else []
        return EmbedOutput(embeddings, attention, hidden)

    def _visual_attention(self, attentions, batch: EncodedBatch) -> list[torch.Tensor]:
        """Last-token attention over each image's visual tokens, averaged over heads and the chosen layers."""
        if not attentions:
            raise RuntimeError("the backbone returned no attention weights: load it with "
                               "ssame.model.attention.attention_implementation(...)")
        last = torch.stack([attentions[i][:, :, -1, :] for i in self.attn_layers]).mean(dim=(0, 2))  # (B, L)
        is_visual = batch.inputs["mm_token_type_ids"].bool()
        return [last[row][is_visual[row]] for row in batch.image_rows]

    def save(self, directory: Path, tokenizer, image_processor) -> None:
        """Backbone via save_pretrained (safetensors) + SSA-ME modules + variant, one self-contained folder.
        LoRA adapters are merged into the saved weights (in place: call this when training is over)."""
        directory.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if backbone is not self.qwen:
            from ssame.model.lora import merge_lora

            backbone = self.backbone = merge_lora(backbone)
        backbone.save_pretrained(directory / "backbone")
        tokenizer.save_pretrained(directory / "backbone")
        image_processor.save_pretrained(directory / "backbone")
        if self.regen is not None:
            save_file({f"regen.{k}": v.contiguous() for k, v in self.regen.state_dict().items()},
                      directory / MODULES_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps({"variant": self.variant}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, attn_implementation: str = "eager"):
        """(embedder, tokenizer, image processor) from a folder written by `save`."""
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"not an ssame model folder (no {CONFIG_FILE}): {directory}")
        variant = json.loads(config_path.read_text())["variant"]
        backbone = Qwen2VLForConditionalGeneration.from_pretrained(
            directory / "backbone", attn_implementation=attention_implementation(attn_implementation, True))
        embedder = cls(backbone, variant)
        if embedder.regen is not None:
            state = load_file(directory / MODULES_FILE)
            embedder.regen.load_state_dict({k.removeprefix("regen."): v for k, v in state.items()})
        tokenizer = AutoTokenizer.from_pretrained(directory / "backbone")
        return embedder, tokenizer, Qwen2VLImageProcessorPil.from_pretrained(directory / "backbone")
