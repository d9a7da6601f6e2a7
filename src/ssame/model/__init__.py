"""The SSA-ME model: Qwen2-VL backbone factory, input building, feature regeneration, embedder."""

from ssame.model.backbone import load_backbone
from ssame.model.embedder import Embedder, EmbedOutput
from ssame.model.inputs import EncodedBatch, InputBuilder

__all__ = ["EmbedOutput", "Embedder", "EncodedBatch", "InputBuilder", "load_backbone"]
