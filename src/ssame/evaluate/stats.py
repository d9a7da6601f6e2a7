"""Bootstrap statistics over queries: CIs of hit@1 and its aggregates, paired tests between two systems.

The resampled unit is the query (the eval row). An aggregate replicate resamples, with replacement, the queries of
every dataset independently (same size as the dataset; one generator seeded by `seed`, datasets taken in sorted name
order), takes each dataset's mean and averages datasets with the grouping of ssame.evaluate.aggregate. CIs are
percentile intervals of the replicates. A system trained with several seeds enters as its per-query mean hit over
seeds (`variant_hits`), a value in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ssame.config import Paths
from ssame.evaluate.aggregate import GROUPS, dataset_groups, group_means
from ssame.evaluate.outputs import predictions_path, read_hits

Interval = tuple[float, float]


def _values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"{name}: need a non-empty 1-D array of finite per-query values, got shape {array.shape}")
    return array


def _check(samples: int, level: float) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"bootstrap samples must be a positive integer, got {samples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must lie in (0, 1), got {level!r}")


def _percentile(replicates: np.ndarray, level: float) -> Interval:
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, samples: int, seed: int, level: float = 0.95) -> Interval:
    """Percentile bootstrap CI of the mean of per-query `values` (`samples` resamples of all queries)."""
    _check(samples, level)
    values = _values(values, "values")
    index = np.random.default_rng(seed).integers(0, values.size, size=(samples, values.size))
    return _percentile(values[index].mean(axis=1), level)


def _replicates(systems: list[dict[str, np.ndarray]], samples: int, seed: int) -> list[np.ndarray]:
    """Per system: replicates × datasets means (datasets in the order of systems[0]), one index draw for all."""
    names = list(systems[0])
    rng = np.random.default_rng(seed)
    index = {name: rng.integers(0, systems[0][name].size, size=(samples, systems[0][name].size))
             for name in sorted(names)}
    return [np.stack([hits[name][index[name]].mean(axis=1) for name in names], axis=1) for hits in systems]


def _checked(hits: dict[str, Any], label: str) -> dict[str, np.ndarray]:
    if not hits:
        raise ValueError(f"{label}: no datasets")
    return {name: _values(values, f"{label} dataset {name!r}") for name, values in hits.items()}


def bootstrap_aggregates(hits: dict[str, np.ndarray], manifest: pd.DataFrame, samples: int, seed: int,
                         level: float = 0.95) -> dict[str, Any]:
    """CIs of every aggregate: {overall, <meta-task>..., ind, ood: (lo, hi) or None for an empty group,
    per_dataset: {dataset: (lo, hi)}} from per-query hits by dataset (one replicate resamples every dataset)."""
    _check(samples, level)
    hits = _checked(hits, "hits")
    (replicates,) = _replicates([hits], samples, seed)
    means = group_means(replicates, dataset_groups(list(hits), manifest))
    result: dict[str, Any] = {name: None if values is None else _percentile(values, level)
                              for name, values in means.items()}
    result["per_dataset"] = {name: _percentile(replicates[:, i], level) for i, name in enumerate(hits)}
    return result


def paired_bootstrap_groups(hits_a: dict[str, np.ndarray], hits_b: dict[str, np.ndarray], manifest: pd.DataFrame,
                            samples: int, seed: int, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of A − B for every non-empty aggregate of GROUPS: {group: result of `paired_bootstrap`}.

    Both systems are resampled with the same query indices. With δ the observed difference and δ*_i the
    difference in replicate i of B replicates, the CI is the percentile interval of δ*, and the two-sided p-value
    tests δ = 0 by the shifted null (Koehn 2004; Berg-Kirkpatrick et al. 2012): p = (1 + #{i : |δ*_i − δ| ≥ |δ|})
    / (B + 1), the +1 keeping it a valid p-value (Davison & Hinkley 1997). Identical systems give p = 1; the
    smallest p is 1 / (B + 1).
    """
    _check(samples, level)
    hits_a, hits_b = _checked(hits_a, "system A"), _checked(hits_b, "system B")
    if set(hits_a) != set(hits_b):
        raise ValueError(f"paired bootstrap: dataset(s) {sorted(set(hits_a) ^ set(hits_b))} not scored by both")
    for name, values in hits_a.items():
        if values.size != hits_b[name].size:
            raise ValueError(f"paired bootstrap: dataset {name!r} has {values.size} queries in A, "
                             f"{hits_b[name].size} in B")
    hits_b = {name: hits_b[name] for name in hits_a}
    groups = dataset_groups(list(hits_a), manifest)
    point = group_means(np.array([hits_a[n].mean() - hits_b[n].mean() for n in hits_a]), groups)
    rep_a, rep_b = _replicates([hits_a, hits_b], samples, seed)
    delta_star = group_means(rep_a - rep_b, groups)
    result = {}
    for name, delta in point.items():
        if delta is None:
            continue
        delta, star = float(delta), delta_star[name]
        extreme = int(np.count_nonzero(np.abs(star - delta) >= abs(delta)))
        result[name] = {"key": name, "delta": delta, "ci95": _percentile(star, level),
                        "p_value": (1 + extreme) / (1 + samples), "samples": samples}
    return result


def paired_bootstrap(hits_a: dict[str, np.ndarray], hits_b: dict[str, np.ndarray], manifest: pd.DataFrame,
                     samples: int, seed: int, key: str = "overall", level: float = 0.95) -> dict[str, Any]:
    """{key, delta (A − B, point estimate), ci95 (lo, hi), p_value, samples} for aggregate `key` (one of GROUPS);
    definitions in `paired_bootstrap_groups`. Raises if the systems' datasets or query counts differ."""
    if key not in GROUPS:
        raise ValueError(f"paired bootstrap: key {key!r} is not one of {GROUPS}")
    result = paired_bootstrap_groups(hits_a, hits_b, manifest, samples, seed, level)
    if key not in result:
        raise ValueError(f"paired bootstrap: aggregate {key!r} has no dataset")
    return result[key]


def variant_hits(paths: Paths, variant: str, seeds: list[int], datasets: list[str]) -> dict[str, np.ndarray]:
    """Per dataset: per-query mean hit over `seeds` (in [0, 1]), read with ssame.evaluate.outputs.read_hits.

    Raises naming the files if two seeds disagree on a dataset's number of queries.
    """
    if not seeds:
        raise ValueError(f"variant {variant!r}: no seeds")
    result = {}
    for name in datasets:
        per_seed = {seed: read_hits(paths.eval(variant, seed), name) for seed in seeds}
        counts = {seed: hits.size for seed, hits in per_seed.items()}
        if len(set(counts.values())) > 1:
            files = {str(predictions_path(paths.eval(variant, seed), name)): n for seed, n in counts.items()}
            raise ValueError(f"variant {variant!r} dataset {name!r}: seeds disagree on the query count: {files}")
        result[name] = np.mean(np.stack(list(per_seed.values())), axis=0)
    return result
