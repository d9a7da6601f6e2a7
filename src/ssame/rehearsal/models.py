"""Tiny random-config models of every class the paper profile loads, saved like their hub repositories.

`write_tiny_models(root, seed)` writes `<root>/<org>/<name>/` for each paper model id with `save_pretrained`, so the
paper code path loads them unchanged with `from_pretrained(<folder>)` (`revision: null`, a local folder):

- `backbone` (Qwen/Qwen2-VL-2B-Instruct): `Qwen2VLForConditionalGeneration`, a byte-level BPE tokenizer with
  Qwen2-VL's special tokens, the Qwen2-VL image processor config;
- `lmm` (Qwen/Qwen2-VL-7B-Instruct): the same classes (another seed), for the subject phrases;
- `grounding_dino` (IDEA-Research/grounding-dino-base): `GroundingDinoForObjectDetection` + `GroundingDinoProcessor`
  (letter-level BERT vocabulary);
- `owlv2` (google/owlv2-base-patch16-ensemble): `Owlv2ForObjectDetection` + `Owlv2Processor` (byte-level CLIP vocab);
- `sam` (facebook/sam-vit-base): `SamModel` + `SamProcessor`.

The Qwen2-VL vision tower keeps the real geometry (patch 14, spatial merge 2, temporal patch 2) at a tiny depth and
width; every file is deterministic for a seed.
"""

from __future__ import annotations

import string
from functools import partial
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPTokenizer,
    GenerationConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    ResNetConfig,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.atomic import atomic_dir
from ssame.data.hub import mmeb_datasets
from ssame.data.tokenizer import train_tokenizer
from ssame.saliency.lmm_subjects import PROMPT

# The hub ids the paper profile loads; each folder is written at <root>/<hub id>.
HUB_IDS = {"backbone": "Qwen/Qwen2-VL-2B-Instruct", "lmm": "Qwen/Qwen2-VL-7B-Instruct",
           "grounding_dino": "IDEA-Research/grounding-dino-base", "owlv2": "google/owlv2-base-patch16-ensemble",
           "sam": "facebook/sam-vit-base"}
# Qwen2-VL's added tokens beyond the ones `train_tokenizer` reserves (order as in the real tokenizer).
QWEN_EXTRA_TOKENS = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                     "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_pad|>"]
TOKENIZER_VOCAB = 400
# Real Qwen2-VL geometry (preprocessor_config.json of Qwen2-VL-2B/7B-Instruct), tiny depth and width.
QWEN_VISION = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2}
QWEN_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096,
             "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}}
QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # min_pixels, max_pixels of the real repos
_TINY_BLOCK = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}


def _corpus() -> list[str]:
    """Generic text for the tokenizer: MMEB's instructions and the subject-phrase prompt."""
    table = mmeb_datasets()
    return sorted({*table["qry_instruction"], *table["tgt_instruction"], PROMPT,
                   string.ascii_letters, string.digits + string.punctuation})


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2-VL's special tokens; eos `<|im_end|>`, pad `<|endoftext|>` like the Instruct repos."""
    tokenizer = train_tokenizer(_corpus(), TOKENIZER_VOCAB)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_EXTRA_TOKENS})
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def write_qwen2_vl(folder: Path, seed: int, tie_word_embeddings: bool, text: dict | None = None,
                   vision: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """Qwen2-VL Instruct with random init; the 2B ties its input and output embeddings, the 7B does not (as the real
    configs). `text`/`vision` replace the tiny dimensions (bench/gpu.py passes the published 2B ones; `text` then
    names its vocabulary size, else the tokenizer's is used)."""
    tokenizer = qwen_tokenizer()
    text = text or {**QWEN_TEXT, "vocab_size": len(tokenizer)}
    vision = {**(vision or QWEN_VISION), "hidden_size": text["hidden_size"]}
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in
           ["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]}
    pad, eos = ids["<|endoftext|>"], ids["<|im_end|>"]
    config = Qwen2VLConfig(
        text_config={**text, "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad,
                     "tie_word_embeddings": tie_word_embeddings},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(size=QWEN_PIXELS, patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
                             temporal_patch_size=vision["temporal_patch_size"]).save_pretrained(folder)


def _write_owlv2(folder: Path, seed: int) -> None:
    """OWLv2 with a byte-level CLIP tokenizer (no merges) and 64-pixel inputs. The box head's output layer is zero,
    so every patch predicts its prior box (a quarter of the image, centred on the patch): boxes are never
    degenerate, whatever the random weights."""
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + len(chars) for i, c in enumerate(chars)}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16))
    config = Owlv2Config(
        text_config=dict(hidden_size=32, vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos, **_TINY_BLOCK),
        vision_config=dict(hidden_size=32, image_size=64, patch_size=16, **_TINY_BLOCK), projection_dim=32)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config)
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _write_grounding_dino(folder: Path, seed: int) -> None:
    """Grounding DINO with a tiny ResNet backbone, a one-layer BERT and a letter-level WordPiece vocabulary. Inputs
    have a shorter side of 128 pixels, so the stride-64 feature level is at least 2 x 2 (its group norm needs more
    than one value per channel)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(string.ascii_lowercase) + [
        "##" + c for c in string.ascii_lowercase]
    vocab = {t: i for i, t in enumerate(tokens)}
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}),
        tokenizer=BertTokenizer(vocab=vocab))
    config = GroundingDinoConfig(
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                     out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False, use_pretrained_backbone=False,
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def _write_sam(folder: Path, seed: int) -> None:
    """SAM on 64-pixel inputs (4 x 4 image embedding, 16 x 16 low-resolution masks)."""
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64},
                                                               pad_size={"height": 64, "width": 64}))
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, window_size=2, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(seed)
    SamModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)


_WRITERS = {"backbone": partial(write_qwen2_vl, tie_word_embeddings=True),
            "lmm": partial(write_qwen2_vl, tie_word_embeddings=False), "grounding_dino": _write_grounding_dino,
            "owlv2": _write_owlv2, "sam": _write_sam}


def write_tiny_models(root: Path, seed: int) -> dict[str, Path]:
    """Write every tiny model under `root` (`<root>/<hub id>/`); returns {key: folder} for the keys of `HUB_IDS`."""
    folders: dict[str, Path] = {}
    for key, hub_id in HUB_IDS.items():
        folders[key] = Path(root) / hub_id
        with atomic_dir(folders[key]) as tmp:
            _WRITERS[key](tmp, seed + 1 if key == "lmm" else seed)  # the LMM is not a copy of the backbone
    return folders
