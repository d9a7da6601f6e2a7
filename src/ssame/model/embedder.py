"""SSA-ME embedder: Qwen2-VL + optional feature regeneration; last-token pooling, L2-normalised.

Position ids (`mrope`, params `model.mrope`) are passed to the Qwen2-VL core explicitly. `vlm2vec_1d`: every token,
image tokens included, gets the plain 1-D position of its place among the unpadded tokens (all three M-RoPE
sections equal), as VLM2Vec's Qwen2-VL copy gives inputs whose image tokens follow no `<|vision_start|>`.
`grouped`: transformers' 3-D M-RoPE, image tokens grouped by `mm_token_type_ids` (height/width grid positions),
text-only batches 0..L-1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.atomic import atomic_dir
from ssame.config import as_variant
from ssame.model.attention import attention_implementation
from ssame.model.inputs import EncodedBatch
from ssame.model.regen import FeatureRegenerator

MODULES_FILE, CONFIG_FILE = "ssame_modules.safetensors", "ssame.json"
MROPE = ("vlm2vec_1d", "grouped")


@dataclass
class EmbedOutput:
    embeddings: torch.Tensor                 # (B, D), unit norm
    visual_attention: list[torch.Tensor]     # per image: pooled-token attention on its visual tokens (n,)
    visual_hidden: list[torch.Tensor]        # per image: last-layer hidden states of its visual tokens (n, D)


def position_ids(qwen: Qwen2VLForConditionalGeneration, inputs: dict[str, torch.Tensor], mrope: str) -> torch.Tensor:
    """(3, B, L) position ids of a batch under `mrope` (module docstring; padding: 0 under vlm2vec_1d, masked)."""
    mask = inputs["attention_mask"]
    if mrope == "vlm2vec_1d":
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0).expand(3, -1, -1)
    if "image_grid_thw" in inputs:
        return qwen.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"],
                                         attention_mask=mask, mm_token_type_ids=inputs["mm_token_type_ids"])[0]
    batch, length = inputs["input_ids"].shape  # what the text model uses when given no positions
    return torch.arange(length, device=mask.device).view(1, 1, -1).expand(3, batch, -1)


def isolated_visual_mask(padding: torch.Tensor, visual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MIRe's fusion-free attention as a 4-D additive mask (B, 1, L, L) for the text model: causal over the unpadded
    tokens, except that a visual token attends to visual tokens only. Text tokens still read the image; nothing of
    the text reaches a visual token's hidden state at any layer. 0 = attend, dtype min = masked (eager adds it,
    SDPA takes it as is)."""
    length = padding.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
    allowed = causal & padding.bool()[:, None, :]  # (B, L, L): query row, key column
    allowed &= ~(visual[:, :, None] & ~visual[:, None, :])  # a visual query never sees a text key
    mask = torch.zeros(allowed.shape, dtype=dtype, device=padding.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class Embedder(nn.Module):
    """Encode a batch of (text, image) inputs into one vector each."""

    def __init__(self, backbone: Qwen2VLForConditionalGeneration, variant: dict[str, Any],
                 lora: dict[str, Any] | None = None, *, mrope: str):
        """`lora` (params `model.lora`) wraps the language model in LoRA/DoRA adapters, freezing the backbone;
        `mrope` (params `model.mrope`) chooses the position ids (module docstring)."""
        super().__init__()
        if mrope not in MROPE:
            raise ValueError(f"mrope must be one of {MROPE}, got {mrope!r}")
        self.mrope = mrope
        if lora:
            from ssame.model.lora import apply_lora

            backbone = apply_lora(backbone, lora)
        self.backbone = backbone
        self.variant = as_variant(variant)
        hidden = self.qwen.config.text_config.hidden_size
        self.regen = FeatureRegenerator(hidden) if self.variant["feature_regen"] else None
        self.attn_layers: list[int] = list(self.variant["attn_layers"])

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
        embeds = core.get_input_embeddings()(inputs["input_ids"])
        if "image_grid_thw" in inputs:
            feats = self._image_features(inputs)
            sizes = [len(f) for f in feats]
            feats = torch.cat(feats)
            if self.regen is not None:
                if batch.saliency is None:
                    raise ValueError("feature regeneration needs saliency maps for every image of the batch")
                saliency = torch.as_tensor(np.concatenate([s.ravel() for s in batch.saliency]), device=feats.device)
                feats = self.regen(feats, saliency, sizes)
            # image features go to the image tokens of `mm_token_type_ids` (a literal <|image_pad|> stays text)
            visual = inputs["mm_token_type_ids"].bool().unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(visual, feats.to(embeds.device, embeds.dtype))
        mask = inputs["attention_mask"]
        if self.variant["fusion"] == "isolated":
            mask = isolated_visual_mask(mask, inputs["mm_token_type_ids"].bool(), embeds.dtype)
        out = core(inputs_embeds=embeds, attention_mask=mask,
                   position_ids=position_ids(self.qwen, inputs, self.mrope), output_attentions=with_attention,
                   use_cache=False)
        embeddings = F.normalize(out.last_hidden_state[:, -1].float(), dim=-1)
        attention = self._visual_attention(out.attentions, batch) if with_attention else []
        is_visual = inputs["mm_token_type_ids"].bool()
        hidden = [out.last_hidden_state[r][is_visual[r]] for r in batch.image_rows] if with_hidden else []
        return EmbedOutput(embeddings, attention, hidden)

    def _image_features(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Each image's merged visual tokens: the features stage's (`image_features`, from InputBuilder) or the
        tower's own (`pixel_values`)."""
        core = self.qwen.model
        if "image_features" in inputs:
            sizes = (inputs["image_grid_thw"].prod(-1) // core.visual.spatial_merge_size**2).tolist()
            return torch.split(inputs["image_features"], sizes)
        return core.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output

    def _visual_attention(self, attentions, batch: EncodedBatch) -> list[torch.Tensor]:
        """Last-token attention over each image's visual tokens, averaged over heads and the chosen layers."""
        if not attentions:
            raise RuntimeError("the backbone returned no attention weights: load it with "
                               "ssame.model.attention.attention_implementation(...)")
        last = torch.stack([attentions[i][:, :, -1, :] for i in self.attn_layers]).mean(dim=(0, 2))  # (B, L)
        is_visual = batch.inputs["mm_token_type_ids"].bool()
        return [last[row][is_visual[row]] for row in batch.image_rows]

    def save(self, directory: Path, tokenizer, image_processor) -> None:
        """Backbone via save_pretrained (safetensors) + SSA-ME modules + variant, one self-contained folder, written
        atomically (it replaces any previous one). LoRA adapters are merged into the saved weights (in place: call
        this when training is over)."""
        backbone = self.backbone
        if backbone is not self.qwen:
            from ssame.model.lora import merge_lora

            backbone = self.backbone = merge_lora(backbone)
        with atomic_dir(directory) as tmp:
            backbone.save_pretrained(tmp / "backbone")
            tokenizer.save_pretrained(tmp / "backbone")
            image_processor.save_pretrained(tmp / "backbone")
            if self.regen is not None:
                save_file({f"regen.{k}": v.contiguous() for k, v in self.regen.state_dict().items()},
                          tmp / MODULES_FILE)
            record = {"variant": self.variant.to_dict(), "mrope": self.mrope}
            (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, attn_implementation: str = "eager", *, mrope: str):
        """(embedder, tokenizer, image processor) from a folder written by `save`; `mrope` must be what the model
        was trained with (recorded in the folder)."""
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"not an ssame model folder (no {CONFIG_FILE}): {directory}")
        record = json.loads(config_path.read_text())
        if "mrope" not in record or "attn_layers" not in record["variant"]:
            raise ValueError(f"{config_path}: written by an older ssame (no mrope / attn_layers record); retrain it "
                             "(snakemake reruns training when the params change)")
        if record["mrope"] != mrope:
            raise ValueError(f"{config_path}: the model was trained with mrope {record['mrope']!r}, params "
                             f"model.mrope is {mrope!r}; retrain or set it back")
        backbone = Qwen2VLForConditionalGeneration.from_pretrained(
            directory / "backbone", attn_implementation=attention_implementation(attn_implementation, True))
        embedder = cls(backbone, record["variant"], mrope=mrope)
        if embedder.regen is not None:
            state = load_file(directory / MODULES_FILE)
            embedder.regen.load_state_dict({k.removeprefix("regen."): v for k, v in state.items()})
        tokenizer = AutoTokenizer.from_pretrained(directory / "backbone")
        return embedder, tokenizer, Qwen2VLImageProcessorPil.from_pretrained(directory / "backbone")
