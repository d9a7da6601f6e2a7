"""ssame: reproduction pipeline for SSA-ME (Salient Subject-Aware Multimodal Embedding) on MMEB."""

__version__ = "0.1.0"
