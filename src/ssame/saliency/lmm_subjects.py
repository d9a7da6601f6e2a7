"""Subject phrases of a text, asked of a Qwen2-VL model (the `lmm` subjects backend)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.model.backbone import DTYPES
from ssame.model.inputs import IMAGE_PAD, VISION_END, VISION_START
from ssame.saliency.experts import resolve_device

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{vision}Text: \"{text}\"\n"
    "List the noun phrase(s) naming the object(s) this text refers to{where}, separated by commas. "
    "Answer with the phrases only.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MAX_PHRASE_WORDS = 6

_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
_SPLIT = re.compile(r"[,;\n]|\s+and\s+", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*•]+|\(?\d+[.)])\s*")
_STRIP = " \t\"'`“”‘’.!?:"


def build_prompt(text: str, image_tokens: int) -> str:
    """`PROMPT` for `text` (MMEB placeholders removed) with `image_tokens` image pads; 0 gives a text-only prompt."""
    text = _PLACEHOLDER.sub(" ", text).strip()
    if image_tokens == 0:
        return PROMPT.format(vision="", text=text, where="")
    return PROMPT.format(vision=f"{VISION_START}{IMAGE_PAD * image_tokens}{VISION_END}", text=text,
                         where=" in the image")


def parse_phrases(answer: str) -> list[str]:
    """Lower-cased phrases of an answer split on commas, semicolons, newlines and " and ".

    Quotes, bullets, numbering and trailing punctuation are stripped; empty, repeated and over-long
    (more than `MAX_PHRASE_WORDS` words) phrases are dropped, order kept.
    """
    phrases: list[str] = []
    for piece in _SPLIT.split(answer):
        phrase = " ".join(_BULLET.sub("", piece.strip(_STRIP)).strip(_STRIP).lower().split())
        if phrase and phrase not in phrases and len(phrase.split()) <= MAX_PHRASE_WORDS:
            phrases.append(phrase)
    return phrases


class LMMSubjects:
    """Greedy, batched Qwen2-VL answers to `PROMPT`, parsed by `parse_phrases`.

    The prompt is the Qwen2-VL chat format written out by hand (system turn, user turn with the image as
    `<|vision_start|>` + one `<|image_pad|>` per merged visual token + `<|vision_end|>`, then the instruction
    `Text: "{text}"` / "List the noun phrase(s) naming the object(s) this text refers to in the image, separated by
    commas. Answer with the phrases only."); a pair without an image gets the same turn without the vision block
    and without "in the image".
    """

    def __init__(self, model: str | Path, *, revision: str | None, max_new_tokens: int, batch_size: int, device: str,
                 dtype: str):
        """`model` at `revision` (None for a local folder); `device` `auto` = cuda when available, else cpu."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, padding_side="left")
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in (IM_START, IM_END, VISION_START, IMAGE_PAD, VISION_END) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer of {model} lacks the Qwen2-VL special tokens {missing}")
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            model, revision=revision, dtype=DTYPES[dtype]).to(device).eval()
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model, revision=revision)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_token_ids = list(dict.fromkeys([*eos, self.tokenizer.convert_tokens_to_ids(IM_END)]))

    def encode(self, pairs: list[tuple[str, np.ndarray | None]]) -> dict[str, torch.Tensor]:
        """Left-padded generation inputs of one batch: ids, mask, `mm_token_type_ids` and any image patches."""
        vision: dict[str, torch.Tensor] = {}
        images = [Image.fromarray(image) for _, image in pairs if image is not None]
        counts: list[int] = []
        if images:
            vision = dict(self.image_processor(images=images, return_tensors="pt"))
            counts = (vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
        tokens = iter(counts)
        prompts = [build_prompt(text, 0 if image is None else next(tokens)) for text, image in pairs]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int(), **vision}
        return {k: v.to(self.device) for k, v in inputs.items()}

    def __call__(self, pairs: list[tuple[str, np.ndarray | None]]) -> list[list[str]]:
        """Subject phrases of each (text, RGB uint8 image or None) pair."""
        for i, (text, image) in enumerate(pairs):
            if not _PLACEHOLDER.sub(" ", text).strip():
                raise ValueError(f"pair {i}: text is empty")
            if image is not None and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
                raise ValueError(f"pair {i}: image must be an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
        answers: list[str] = []
        for start in range(0, len(pairs), self.batch_size):
            inputs = self.encode(pairs[start:start + self.batch_size])
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id)
            answers += self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [parse_phrases(a) for a in answers]
