"""Training stage: one readable contrastive recipe (VLM2Vec) plus the SSA-ME objectives, under accelerate."""

from ssame.train.recipe import train

__all__ = ["train"]
