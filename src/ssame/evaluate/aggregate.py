"""MMEB aggregation: meta-task, IND, OOD and overall scores as unweighted means over datasets."""

from __future__ import annotations

import pandas as pd

META_TASKS = ("classification", "vqa", "retrieval", "grounding")


def aggregate(scores: dict[str, float], manifest: pd.DataFrame) -> dict[str, float | None]:
    """Per-dataset hit@1 -> {overall, <meta-task>..., ind, ood}; a group with no dataset is None."""
    missing = set(scores) - set(manifest["dataset"])
    if missing:
        raise KeyError(f"datasets not in the manifest: {sorted(missing)}")
    table = manifest.set_index("dataset").loc[list(scores)].assign(score=pd.Series(scores))

    def mean(mask: pd.Series) -> float | None:
        return float(table.loc[mask, "score"].mean()) if mask.any() else None

    result: dict[str, float | None] = {"overall": mean(table["score"].notna())}
    result |= {task: mean(table["meta_task"] == task) for task in META_TASKS}
    result |= {"ind": mean(table["split"] == "IND"), "ood": mean(table["split"] == "OOD")}
    return result
