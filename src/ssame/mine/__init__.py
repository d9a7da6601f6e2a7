"""Mine stage (UniME-V2): hard negatives for every training query, judged, for the variants that train on them.

For seed s, the miner (params `mine.miner`, the baseline) of the same seed embeds every MMEB-train query and every
distinct positive of its dataset (the candidate pool); each query keeps its `top_k` most similar candidates below
the similarity threshold δ (its own positive excluded), the judge scores each and the query's positive, and
candidates the judge scores within the margin β of the positive are dropped as false negatives. Writes
`<results>/mine/seed<s>/negatives.parquet` (one row per training row, in `training_rows` order) and `stats.json`.
Design: docs/seed_systems.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from ssame.atomic import atomic_path, write_json
from ssame.config import Paths, as_params
from ssame.data.io import image_root
from ssame.logs import Progress
from ssame.mine.judge import make_judge
from ssame.mine.negatives import drop_false_negatives, top_candidates
from ssame.train.batches import training_rows

log = logging.getLogger(__name__)
SIMILARITY_ROWS = 1024  # queries per similarity block
COLUMNS = ["dataset", "neg_text", "neg_image_path", "neg_judge", "pos_judge", "fallback"]


def _embed(miner: _Miner, keys: list[tuple[str, str]]) -> torch.Tensor:
    """Unit-norm embeddings of `keys` in order, each distinct input encoded once (evaluation's `encode`)."""
    from ssame.evaluate.encode import encode

    unique = list(dict.fromkeys(keys))
    out = encode(miner.embedder, miner.build, unique, miner.batch_size, miner.store, None, miner.state).embeddings
    index = {k: i for i, k in enumerate(unique)}
    return out[[index[k] for k in keys]]


class _Miner:
    """The miner model and its input builder (as evaluation loads a model folder)."""

    def __init__(self, params: Mapping[str, Any], seed: int):
        from ssame.features.store import features_for
        from ssame.model import Embedder, InputBuilder
        from ssame.model.backbone import square_side
        from ssame.saliency.store import SaliencyStore

        paths, model = Paths.from_params(params), params["model"]
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.embedder, tokenizer, processor = Embedder.load(paths.model(params["mine"]["miner"], seed),
                                                            model["attn_implementation"], mrope=model["mrope"])
        self.embedder.to(self.state.device).eval()
        self.store = SaliencyStore(paths.saliency) if self.embedder.uses_saliency else None
        self.build = InputBuilder(tokenizer, processor, image_root(paths.data), params["evaluate"]["max_text_tokens"],
                                  image_side=square_side(model), features=features_for(params, self.embedder))
        self.batch_size = params["evaluate"]["batch_size"]


def mine_dataset(rows: pd.DataFrame, queries: torch.Tensor, candidates: torch.Tensor, pool: pd.DataFrame,
                 own: np.ndarray, judge, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Mined negatives of one dataset's rows (queries (N, D) and pool (C, D) unit-norm; `own[i]` = row i's
    positive in the pool): one output row per input row, in order."""
    picked = [p for start in range(0, len(queries), SIMILARITY_ROWS)  # bounded memory at MMEB's 50k rows
              for p in top_candidates((queries[start:start + SIMILARITY_ROWS] @ candidates.T).numpy(),
                                      own[start:start + SIMILARITY_ROWS], cfg["top_k"], cfg["similarity_threshold"])]
    pairs = [(rows.iloc[i], pool.iloc[j]) for i in range(len(rows)) for j in [own[i], *picked[i]]]
    scores = judge(pairs)
    out, at = [], 0
    for i, chosen in enumerate(picked):
        positive, judged = float(scores[at]), scores[at + 1:at + 1 + len(chosen)]
        at += 1 + len(chosen)
        kept, fallback = drop_false_negatives(judged, positive, cfg["margin"])
        if float(queries[i] @ candidates[chosen[0]]) >= cfg["similarity_threshold"]:
            fallback = True  # δ left no candidate: the least similar one was taken
        negatives = pool.iloc[chosen[kept]]
        out.append({"neg_text": negatives["pos_text"].tolist(), "neg_image_path": negatives["pos_image_path"].tolist(),
                    "neg_judge": judged[kept].astype(float).tolist(), "pos_judge": positive, "fallback": fallback})
    return pd.DataFrame(out)


def build(params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Mine seed `seed`'s negatives; write the parquet and stats; return the stats."""
    params = as_params(params)
    cfg, paths = params["mine"], Paths.from_params(params)
    if cfg is None:
        raise ValueError("mine: params have no `mine` section (needed by variants with mined_negatives)")
    began = time.perf_counter()
    miner = _Miner(params, seed)
    judge = make_judge(cfg["judge"], paths.data, image_root(paths.data))
    rows = training_rows(paths.data)
    frames, stats = [], {"judge": judge.label, "miner": cfg["miner"], "seed": seed, "datasets": {}}
    progress = Progress(log, "dataset", rows["dataset"].nunique(), every=1)
    for done, (name, group) in enumerate(rows.groupby("dataset", sort=False), start=1):
        group = group.reset_index(drop=True)
        keys = group["pos_text"] + "\x00" + group["pos_image_path"]
        pool = group.loc[~keys.duplicated()].reset_index(drop=True)
        own = pd.Index(pool["pos_text"] + "\x00" + pool["pos_image_path"]).get_indexer(keys)
        queries = _embed(miner, list(zip(group["qry"], group["qry_image_path"], strict=True)))
        candidates = _embed(miner, list(zip(pool["pos_text"], pool["pos_image_path"], strict=True)))
        mined = mine_dataset(group, queries, candidates, pool, own, judge, cfg).assign(dataset=name)
        frames.append(mined)
        kept = mined["neg_text"].map(len)
        stats["datasets"][name] = {"queries": len(group), "pool": len(pool), "mean_negatives": float(kept.mean()),
                                   "fallbacks": int(mined["fallback"].sum()),
                                   "mean_negative_judge": float(np.mean([s for x in mined["neg_judge"] for s in x]))}
        progress.update(done, name=name, negatives=float(kept.mean()))
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    out_dir = paths.mine(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "negatives.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    stats["seconds"] = round(time.perf_counter() - began, 1)
    write_json(out_dir / "stats.json", stats)
    return stats
