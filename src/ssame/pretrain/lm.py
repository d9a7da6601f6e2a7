"""Next-token prediction on (image, text) samples: the text after the image is the target, the image its context."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssame.model import InputBuilder
from ssame.model.embedder import position_ids
from ssame.model.inputs import EncodedBatch
from ssame.pretrain.corpus import Sample


def encode(build: InputBuilder, samples: list[Sample]) -> EncodedBatch:
    return build([s.text for s in samples], [s.image for s in samples])


def token_log_probs(model, batch: EncodedBatch, mrope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each next text token (B, L-1), mask of the tokens that count: text, not padding)."""
    inputs = batch.inputs
    logits = model(**inputs, position_ids=position_ids(model, inputs, mrope), use_cache=False).logits
    targets = inputs["input_ids"][:, 1:]
    counted = (inputs["attention_mask"][:, 1:] == 1) & (inputs["mm_token_type_ids"][:, 1:] == 0)
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return log_probs, counted


def lm_loss(model, batch: EncodedBatch, mrope: str) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's text tokens (image tokens are context, never targets)."""
    log_probs, counted = token_log_probs(model, batch, mrope)
    return -(log_probs * counted).sum() / counted.sum()
