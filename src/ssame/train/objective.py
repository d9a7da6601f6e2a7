"""The loss of one global batch and its backward pass: full batch, or GradCache in chunks of equal gradient.

Every process encodes its own contiguous slice of the global batch, prepared on the CPU by `data.Preparer`
(usually in DataLoader workers, `data.StepDataset`). Batch-coupled terms (InfoNCE, subject alignment) are computed
on representations gathered from every process, with the gradient kept on the local slice and the loss scaled by
the world size, so DDP's gradient averaging yields exactly the single-process gradient. Per-image terms (attention
KL) are sums normalised by the global image count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ssame.losses import (
    gather_varlen_with_grad,
    gather_with_grad,
    info_nce,
    saliency_attention_kl,
    saliency_pool,
    soft_label_symmetric_kl,
    subject_alignment,
)
from ssame.model import Embedder, InputBuilder
from ssame.model.embedder import EmbedOutput
from ssame.saliency.store import SaliencyStore
from ssame.train.data import PreparedChunk, Preparer, StepBatch

REPS = ("query", "pos", "neg", "region", "phrase")


@dataclass
class ChunkOut:
    """Representations of a chunk of rows (keys of REPS), their ids, and the chunk's attention-KL sum."""

    reps: dict[str, torch.Tensor]
    ids: dict[str, torch.Tensor]
    attn_sum: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


@contextmanager
def _replay(state: tuple[torch.Tensor, list[torch.Tensor]]) -> Iterator[None]:
    """Run with the CPU/CUDA RNG set to `state` (recorded in GradCache's first pass), restoring it afterwards."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=list(range(len(cuda)))):
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        yield


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


class Objective:
    """SSA-ME loss = InfoNCE + λ_subj · subject alignment + λ_attn · attention KL, for one variant. Under UniME-V2
    (`mined_negatives`), the batch's hard negatives are each query's k mined ones: `infonce` keeps InfoNCE, `soft_kl`
    replaces it with the symmetric KL to the judge's soft labels over each query's positive and own negatives."""

    def __init__(self, embedder: Embedder, build: InputBuilder, store: SaliencyStore | None,
                 variant: dict[str, Any], train_cfg: dict[str, Any], accelerator,
                 mine_cfg: dict[str, Any] | None = None):
        self.embedder, self.accelerator = embedder, accelerator
        self.temperature = float(train_cfg["temperature"])
        self.mined = variant["mined_negatives"]
        if self.mined != "none" and mine_cfg is None:
            raise ValueError(f"mined_negatives '{self.mined}' needs params `mine`")
        mined_k = mine_cfg["negatives"] if self.mined != "none" else None
        self.chunk = train_cfg["grad_cache_chunk_size"]
        self.attn_weight = float(variant["attn_loss_weight"])
        self.subject_weight = float(variant["subject_loss_weight"])
        if (self.attn_weight > 0 or self.subject_weight > 0) and store is None:
            raise ValueError("the attention and subject objectives need the saliency stage's maps")
        self.preparer = Preparer(build, store, bool(train_cfg["hard_negatives"]), self.subject_weight > 0, mined_k,
                                 train_cfg["one_pass"])

    @property
    def build(self) -> InputBuilder:
        return self.preparer.build

    def annotate(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Ids and subject phrases of a batch (`Preparer.annotate`)."""
        return self.preparer.annotate(batch)

    def prepare(self, global_batch: pd.DataFrame) -> StepBatch:
        """This process's prepared share of a global batch (what `data.StepDataset` yields)."""
        acc = self.accelerator
        return self.preparer.step(global_batch, acc.num_processes, acc.process_index, self.chunk)

    # ---- encoding ------------------------------------------------------------------------------------------
    def encode(self, chunk: PreparedChunk, with_attention: bool) -> ChunkOut:
        """Representations of a prepared chunk of this process's slice: queries, positives, hard negatives and
        subject phrases, in one embedder call (DDP requires one forward per backward)."""
        device = self.accelerator.device
        chunk = chunk.to(device)
        need_attn = with_attention and self.attn_weight > 0
        batches = chunk.batches
        outs = dict(zip(batches, self.embedder(list(batches.values()), with_attention=need_attn,
                                               with_hidden=self.subject_weight > 0), strict=True))
        maps = {k: b.saliency or [] for k, b in batches.items()}
        if chunk.spans is not None:  # one pass over every group: each group's rows and images back apart
            (out,), (group_maps,) = outs.values(), maps.values()
            outs = {k: EmbedOutput(out.embeddings[r0:r1], out.visual_attention[i0:i1], out.visual_hidden[i0:i1])
                    for k, (r0, r1, i0, i1) in chunk.spans.items()}
            maps = {k: group_maps[i0:i1] for k, (_, _, i0, i1) in chunk.spans.items()}
        empty = outs["query"].embeddings.new_zeros((0, outs["query"].embeddings.shape[1]))
        reps = {k: outs[k].embeddings if k in outs else empty for k in ("query", "pos", "neg", "phrase")}
        saliency = {k: [torch.as_tensor(s.ravel(), device=device) for s in maps.get(k, [])] for k in ("query", "pos")}
        kl_sum, extras = torch.zeros((), device=device), {}
        attention = [a for k in ("query", "pos") for a in outs[k].visual_attention]
        if need_attn and attention:
            kl_sum = saliency_attention_kl(attention, saliency["query"] + saliency["pos"], reduction="sum")
            extras = {"mass_sum": torch.stack([a.detach().sum() for a in attention]).sum().item(),
                      "mass_count": float(len(attention))}
        regions = [F.normalize(saliency_pool(outs[group].visual_hidden[i], saliency[group][i]).float(), dim=-1)
                   for group, i in chunk.regions]
        reps["region"] = torch.stack(regions) if regions else empty
        return ChunkOut(reps, chunk.ids, kl_sum, extras)

    # ---- loss over gathered representations ----------------------------------------------------------------
    def batch_terms(self, reps: dict[str, torch.Tensor], ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Global InfoNCE (or UniME-V2's soft-label KL) and subject alignment from this process's representations
        (gathered inside)."""
        if self.mined == "soft_kl":
            query, pos, judge = (gather_with_grad(reps["query"]), gather_with_grad(reps["pos"]),
                                 gather_with_grad(ids["judge"]))
            negs = gather_with_grad(reps["neg"]).view(len(query), judge.shape[1] - 1, -1)  # k per row, row-major
            terms = {"loss_soft_kl": soft_label_symmetric_kl(query, torch.cat([pos[:, None], negs], dim=1), judge,
                                                              self.temperature)}
        else:
            terms = {"loss_nce": info_nce(
                gather_with_grad(reps["query"]), gather_with_grad(reps["pos"]), self.temperature,
                gather_with_grad(ids["pos"]), gather_varlen_with_grad(reps["neg"]),
                gather_varlen_with_grad(ids["neg"]))}
        if self.subject_weight > 0:
            terms["loss_subject"] = subject_alignment(
                gather_varlen_with_grad(reps["region"]), gather_varlen_with_grad(reps["phrase"]),
                self.temperature, gather_varlen_with_grad(ids["region"]))
        return terms

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        main = terms["loss_soft_kl"] if self.mined == "soft_kl" else terms["loss_nce"]
        return main + self.subject_weight * terms.get("loss_subject", 0.0)

    # ---- forward + backward of one global batch ------------------------------------------------------------
    def backward(self, batch: pd.DataFrame | StepBatch) -> dict[str, float]:
        """Accumulate the gradient of the global batch's loss into the model; return the loss terms. `batch` is
        the global batch (prepared here) or this process's `StepBatch` of it."""
        step = self.prepare(batch) if isinstance(batch, pd.DataFrame) else batch
        if not step.grad_cache:
            out = self.encode(step.chunks[0], with_attention=True)
            terms = self.batch_terms(out.reps, out.ids)
            world = self.accelerator.num_processes
            self.accelerator.backward(
                world * (self._weighted(terms) + self.attn_weight * out.attn_sum / step.n_images))
            return self._report(terms, out.attn_sum, step.n_images, [out])
        return self._grad_cache(step.chunks, step.n_images)

    def _grad_cache(self, chunks: list[PreparedChunk], n_images: int) -> dict[str, float]:
        """GradCache (Gao et al. 2021): representations without graph, loss gradient w.r.t. them, then a chunk-wise
        re-encode with the RNG replayed, backpropagating rep · grad. Gradients equal the full-batch ones."""
        acc, world = self.accelerator, self.accelerator.num_processes
        states, outs = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(_rng_state())
                outs.append(self.encode(chunk, with_attention=False))
        cached = {k: torch.cat([o.reps[k] for o in outs]).detach().requires_grad_() for k in REPS}
        ids = {k: torch.cat([o.ids[k] for o in outs]) for k in outs[0].ids}
        terms = self.batch_terms(cached, ids)
        (world * self._weighted(terms)).backward()
        grads = {k: (cached[k].grad if cached[k].grad is not None else torch.zeros_like(cached[k])) for k in REPS}
        offsets = dict.fromkeys(REPS, 0)
        attn_sum, replays = torch.zeros((), device=acc.device), []
        for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            sync = nullcontext() if i == len(chunks) - 1 else acc.no_sync(self.embedder)
            with sync, _replay(state):
                out = self.encode(chunk, with_attention=True)
                surrogate = world * self.attn_weight * out.attn_sum / n_images
                for k in REPS:
                    n = len(out.reps[k])
                    surrogate = surrogate + (out.reps[k] * grads[k][offsets[k]:offsets[k] + n]).sum()
                    offsets[k] += n
                acc.backward(surrogate)
            attn_sum = attn_sum + out.attn_sum.detach()
            replays.append(out)
        return self._report(terms, attn_sum, n_images, replays)

    def _report(self, terms: dict[str, torch.Tensor], attn_sum: torch.Tensor, n_images: int,
                outs: list[ChunkOut]) -> dict[str, float]:
        """Loss terms as floats, identical on every process (per-image sums reduced across processes)."""
        record = {k: v.item() for k, v in terms.items()}
        if self.attn_weight > 0:
            record["loss_attn"] = self.accelerator.reduce(attn_sum.detach(), reduction="sum").item() / n_images
        main = record["loss_soft_kl"] if self.mined == "soft_kl" else record["loss_nce"]
        record["loss"] = (main + self.subject_weight * record.get("loss_subject", 0.0)
                          + self.attn_weight * record.get("loss_attn", 0.0))
        if self.attn_weight > 0:
            mass = torch.tensor([sum(o.extras.get(k, 0.0) for o in outs) for k in ("mass_sum", "mass_count")],
                                device=self.accelerator.device)
            total, count = self.accelerator.reduce(mass, reduction="sum").tolist()
            record["visual_attention_mass"] = total / max(count, 1.0)
        return record
