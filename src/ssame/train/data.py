"""The training batch stream as a torch DataLoader: per optimizer step, this process's prepared inputs.

The CPU half of the objective lives here (`Preparer`): annotate rows (ids, subject phrases; training annotates the
whole table once), then for this process's slice of a global batch tokenise, preprocess images and read saliency
maps, chunk by chunk (GradCache chunks are prepared once and encoded twice). `StepDataset[k]` is step k+1's
`StepBatch`; the order is a pure function of the seed (`batches.BatchOrder`), so
a loader over steps [k, steps) yields exactly the batches an uninterrupted run yields from step k on. With
`train.num_workers` > 0, worker processes prepare steps ahead of the device (DataLoader prefetch); on CUDA the
tensors are pinned and copied asynchronously. Nothing here keeps images or maps beyond the step that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ssame.model import EncodedBatch, InputBuilder
from ssame.saliency.store import SaliencyStore
from ssame.train.batches import BatchOrder
from ssame.train.mined import choose

GROUPS = ("query", "pos", "neg", "phrase")
ONE_PASS = "all"  # the batch key of a chunk prepared for one forward pass (`train.one_pass`)


def _to(batch: EncodedBatch, device: torch.device) -> EncodedBatch:
    return replace(batch, inputs={k: v.to(device, non_blocking=True) for k, v in batch.inputs.items()})


def _pinned(batch: EncodedBatch) -> EncodedBatch:
    return replace(batch, inputs={k: v.pin_memory() for k, v in batch.inputs.items()})


@dataclass
class PreparedChunk:
    """Model inputs of a chunk of rows (groups of GROUPS that are not empty), the images whose saliency-pooled
    regions meet a subject phrase ((group, image index) per phrase, in phrase order) and the loss ids. `batches`
    holds one batch per group, or under `train.one_pass` the single batch ONE_PASS of every group's rows in GROUPS
    order, with `spans` giving each group's (first row, end row, first image, end image) in it."""

    batches: dict[str, EncodedBatch]
    regions: list[tuple[str, int]]
    ids: dict[str, torch.Tensor]
    spans: dict[str, tuple[int, int, int, int]] | None = None

    def to(self, device: torch.device) -> PreparedChunk:
        return replace(self, batches={k: _to(b, device) for k, b in self.batches.items()},
                       ids={k: v.to(device, non_blocking=True) for k, v in self.ids.items()})

    def pin_memory(self) -> PreparedChunk:
        return replace(self, batches={k: _pinned(b) for k, b in self.batches.items()},
                       ids={k: v.pin_memory() for k, v in self.ids.items()})


@dataclass
class StepBatch:
    """This process's share of one global batch: its chunks (one unless GradCache splits it), whether GradCache
    applies, and the global batch's count of attention-supervised images (the attention loss's normaliser)."""

    chunks: list[PreparedChunk]
    grad_cache: bool
    n_images: int

    def pin_memory(self) -> StepBatch:
        return replace(self, chunks=[c.pin_memory() for c in self.chunks])


class Preparer:
    """The CPU half of the objective, identical on every process (and in every DataLoader worker)."""

    def __init__(self, build: InputBuilder, store: SaliencyStore | None, hard_negatives: bool, with_subjects: bool,
                 mined_k: int | None = None, one_pass: bool = False):
        """`mined_k`: UniME-V2's negatives per query (rows carry `train.mined.choose` columns); they replace
        MMEB's own hard negative. `one_pass`: every group in one batch (PreparedChunk)."""
        self.build, self.store = build, store
        self.hard_negatives, self.with_subjects, self.mined_k = hard_negatives, with_subjects, mined_k
        self.one_pass = one_pass

    def annotate(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Add the ids and subject phrases the loss needs. Ids only say which rows of the batch share a target
        (or a phrase), so annotating a batch or the whole table gives the same loss."""
        rows = batch.reset_index(drop=True).copy()
        mined = [f"{t}\x00{i}" for texts, images in zip(rows.get("all_neg_text", []), rows.get("all_neg_image", []),
                                                        strict=True) for t, i in zip(texts, images, strict=True)]
        keys = pd.concat([rows["pos_text"] + "\x00" + rows["pos_image_path"],
                          rows["neg_text"] + "\x00" + rows["neg_image_path"], pd.Series(mined, dtype=object)],
                         ignore_index=True)
        codes = pd.factorize(keys)[0]
        rows["pos_id"], rows["neg_id"] = codes[:len(rows)], codes[len(rows):2 * len(rows)]
        if mined:  # one id space for positives and mined negatives: a copy of a row's positive is never its negative
            ends = np.cumsum(rows["all_neg_text"].map(len).to_numpy())
            rows["all_neg_id"] = [list(c) for c in np.split(codes[2 * len(rows):], ends[:-1])]
        rows["has_neg"] = self.hard_negatives & ((rows["neg_text"] != "") | (rows["neg_image_path"] != ""))
        for side, text, image in (("qry", "qry", "qry_image_path"), ("pos", "pos_text", "pos_image_path")):
            if self.with_subjects:
                rows[f"{side}_subject"] = [self.store.subject(t, i) or "" if i else ""
                                           for t, i in zip(rows[text], rows[image], strict=True)]
            else:
                rows[f"{side}_subject"] = ""
        phrases = pd.concat([rows["qry_subject"], rows["pos_subject"]], ignore_index=True)
        codes = pd.factorize(phrases)[0]
        rows["qry_subject_id"], rows["pos_subject_id"] = codes[:len(rows)], codes[len(rows):]
        return rows

    @staticmethod
    def attention_images(rows: pd.DataFrame) -> int:
        """Images whose pooled-token attention is supervised (query and positive side)."""
        return int((rows["qry_image_path"] != "").sum() + (rows["pos_image_path"] != "").sum())

    def chunk(self, rows: pd.DataFrame) -> PreparedChunk:
        """Inputs of annotated `rows`: queries, positives, hard negatives and subject phrases, one batch each."""
        if self.mined_k:
            negs = pd.DataFrame({"neg_text": [t for ts in rows["mined_text"] for t in ts],
                                 "neg_image_path": [i for its in rows["mined_image"] for i in its],
                                 "neg_id": [i for ids in rows["mined_id"] for i in ids]})
        else:
            negs = rows[rows["has_neg"]]
        subjects = {side: rows[f"{side}_subject"].tolist() for side in ("qry", "pos")}
        subject_ids = {side: rows[f"{side}_subject_id"].tolist() for side in ("qry", "pos")}
        named = [(side, r) for side in ("qry", "pos") for r in range(len(rows)) if subjects[side][r]]
        groups = {"query": (rows["qry"], rows["qry_image_path"]), "pos": (rows["pos_text"], rows["pos_image_path"]),
                  "neg": (negs["neg_text"], negs["neg_image_path"]),
                  "phrase": ([subjects[side][r] for side, r in named], [""] * len(named))}
        groups = {k: (list(texts), list(images)) for k, (texts, images) in groups.items() if len(texts)}
        spans = None
        if self.one_pass:
            batches = {ONE_PASS: self.build([t for texts, _ in groups.values() for t in texts],
                                            [i for _, images in groups.values() for i in images], self.store)}
            spans, rows_at, images_at = {}, 0, 0
            for k, (texts, images) in groups.items():
                with_image = sum(bool(i) for i in images)
                spans[k] = (rows_at, rows_at + len(texts), images_at, images_at + with_image)
                rows_at, images_at = rows_at + len(texts), images_at + with_image
        else:
            batches = {k: self.build(texts, images, self.store) for k, (texts, images) in groups.items()}
        regions = []
        for side, r in named:
            group = "query" if side == "qry" else "pos"
            images = groups[group][1]
            regions.append((group, sum(bool(i) for i in images[:r])))  # its image's place among the group's
        ids = {"pos": torch.tensor(rows["pos_id"].tolist(), dtype=torch.long),
               "neg": torch.tensor(negs["neg_id"].tolist(), dtype=torch.long),
               "region": torch.tensor([int(subject_ids[side][r]) for side, r in named], dtype=torch.long)}
        if self.mined_k:  # the judge's scores of each row's positive and its k negatives, in that order
            ids["judge"] = torch.tensor([[p, *js] for p, js in zip(rows["pos_judge"], rows["mined_judge"],
                                                                     strict=True)], dtype=torch.float32)
        return PreparedChunk(batches, regions, ids, spans)

    def step(self, global_batch: pd.DataFrame, world: int, rank: int, chunk_size: int | None) -> StepBatch:
        """Process `rank`'s contiguous slice of the global batch, in GradCache chunks of `chunk_size` rows."""
        rows = global_batch if "pos_id" in global_batch else self.annotate(global_batch)
        if len(rows) % world:
            raise ValueError(f"global batch of {len(rows)} rows is not divisible by {world} processes")
        local = len(rows) // world
        mine = rows.iloc[rank * local:(rank + 1) * local]
        grad_cache = bool(chunk_size) and chunk_size < local
        size = chunk_size if grad_cache else local
        chunks = [self.chunk(mine.iloc[s:s + size]) for s in range(0, local, size)]
        return StepBatch(chunks, grad_cache, max(self.attention_images(rows), 1))


class StepDataset(Dataset):
    """Item k: this process's `StepBatch` of optimizer step k + 1 (k in [0, steps))."""

    def __init__(self, rows: pd.DataFrame, order: BatchOrder, preparer: Preparer, world: int, rank: int,
                 chunk_size: int | None, steps: int):
        self.rows, self.order, self.preparer = rows, order, preparer
        self.world, self.rank, self.chunk_size, self.steps = world, rank, chunk_size, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> StepBatch:
        batch = self.rows.iloc[self.order[k]]
        if self.preparer.mined_k:
            batch = choose(batch, self.preparer.mined_k, epoch=k // self.order.per_epoch)
        return self.preparer.step(batch, self.world, self.rank, self.chunk_size)


def _one(item: StepBatch) -> StepBatch:
    return item


def step_loader(dataset: StepDataset, start: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Steps start+1 .. len(dataset) in order; each of `num_workers` processes prepares one step ahead (a step's
    inputs are the whole local batch, so prefetch is kept to one per worker). The loader draws its worker seeds
    from its own generator, leaving the global RNG (model init, dropout, GradCache replay) untouched."""
    return DataLoader(dataset, batch_size=None, sampler=range(start, len(dataset)), num_workers=num_workers,
                      collate_fn=_one, pin_memory=pin_memory, prefetch_factor=1 if num_workers else None,
                      generator=torch.Generator().manual_seed(0))
