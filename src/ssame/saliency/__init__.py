"""Saliency annotation: subject phrases, visual experts, fusion, storage (`SaliencyStore`), quality."""

from __future__ import annotations

from typing import Any

from ssame.saliency.store import SaliencyStore

__all__ = ["SaliencyStore", "build"]


def build(params: dict[str, Any]) -> None:
    """Run the saliency stage (imported on demand: readers of the maps need only `SaliencyStore`)."""
    from ssame.config import as_params
    from ssame.saliency.stage import build as build_stage

    build_stage(as_params(params))
