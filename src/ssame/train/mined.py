"""UniME-V2's mined negatives in the training table: each row's judged list from the mine stage, and the k of
them a step uses (cyclic over epochs, `ssame.mine.negatives.cyclic_choice`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssame.mine.negatives import cyclic_choice

LISTS = {"all_neg_text": "neg_text", "all_neg_image": "neg_image_path", "all_neg_judge": "neg_judge"}


def with_mined(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`rows` (`training_rows`) with each row's mined lists and its positive's judge score from `path` (the mine
    stage's negatives.parquet, one row per training row in the same order)."""
    mined = pd.read_parquet(path)
    if len(mined) != len(rows) or not (mined["dataset"].to_numpy() == rows["dataset"].to_numpy()).all():
        raise ValueError(f"{path}: {len(mined)} rows do not line up with the {len(rows)} training rows (dataset "
                         "by dataset); it was mined from other data: rerun the mine stage")
    empty = np.flatnonzero(mined["neg_text"].map(len).to_numpy() == 0)
    if len(empty):
        raise ValueError(f"{path}: row {int(empty[0])} has no mined negative (the mine stage keeps at least one)")
    out = rows.copy()
    for column, source in LISTS.items():
        out[column] = [list(v) for v in mined[source]]
    out["pos_judge"] = mined["pos_judge"].to_numpy(dtype=float)
    return out


def choose(batch: pd.DataFrame, k: int, epoch: int) -> pd.DataFrame:
    """The batch with `mined_text`, `mined_image`, `mined_judge` and `mined_id`: the k negatives each row uses in
    `epoch` (its lists annotated with `all_neg_id`)."""
    out = batch.copy()
    picks = [cyclic_choice(len(texts), k, epoch) for texts in batch["all_neg_text"]]
    for name in ("text", "image", "judge", "id"):
        out[f"mined_{name}"] = [[values[i] for i in pick]
                                for values, pick in zip(batch[f"all_neg_{name}"], picks, strict=True)]
    return out
