"""Bootstrap CIs and the paired bootstrap test (ssame.evaluate.stats), checked against normal approximations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssame.config import Paths
from ssame.evaluate.aggregate import aggregate
from ssame.evaluate.outputs import write_predictions
from ssame.evaluate.stats import (
    bootstrap_aggregates,
    bootstrap_ci,
    paired_bootstrap,
    paired_bootstrap_groups,
    variant_hits,
)

MANIFEST = pd.DataFrame({
    "dataset": ["A", "B", "C"],
    "meta_task": ["classification", "classification", "vqa"],
    "split": ["IND", "OOD", "IND"],
})
SAMPLES = 4000


def _hits(seed: int, sizes: dict[str, int], rate: float = 0.6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.random(n) < rate).astype(np.float64) for name, n in sizes.items()}


def _normal_p(z: float) -> float:
    """Two-sided normal tail probability of |Z| >= z."""
    return 1.0 - math.erf(abs(z) / math.sqrt(2.0))


def test_ci_contains_the_mean_shrinks_with_queries_and_matches_the_normal_width() -> None:
    widths = []
    for n in (100, 2500):
        values = _hits(n, {"x": n})["x"]
        lo, hi = bootstrap_ci(values, SAMPLES, seed=0)
        assert lo <= values.mean() <= hi
        normal_width = 2 * 1.959964 * values.std() / math.sqrt(n)
        assert hi - lo == pytest.approx(normal_width, rel=0.15)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # 25 × the queries: about 1/5 of the width


def test_ci_is_deterministic_in_the_seed_and_level_widens_it() -> None:
    values = _hits(3, {"x": 300})["x"]
    assert bootstrap_ci(values, 500, seed=7) == bootstrap_ci(values, 500, seed=7)
    assert bootstrap_ci(values, 500, seed=7) != bootstrap_ci(values, 500, seed=8)
    lo90, hi90 = bootstrap_ci(values, 500, seed=7, level=0.9)
    lo99, hi99 = bootstrap_ci(values, 500, seed=7, level=0.99)
    assert lo99 <= lo90 and hi90 <= hi99
    assert bootstrap_ci(np.ones(10), 100, seed=0) == (1.0, 1.0)


def test_aggregate_cis_follow_the_grouping_and_the_normal_width() -> None:
    sizes = {"A": 400, "B": 900, "C": 1600}
    hits = _hits(1, sizes)
    ci = bootstrap_aggregates(hits, MANIFEST, SAMPLES, seed=0)
    point = aggregate({name: values.mean() for name, values in hits.items()}, MANIFEST)
    assert ci["retrieval"] is None and ci["grounding"] is None and point["retrieval"] is None
    for key in ("overall", "classification", "vqa", "ind", "ood"):
        lo, hi = ci[key]
        assert lo <= point[key] <= hi
    # an unweighted mean of k independent dataset means: var = Σ p(1-p)/n / k²
    variances = {name: values.var() / values.size for name, values in hits.items()}
    for key, names in {"overall": ["A", "B", "C"], "classification": ["A", "B"], "ind": ["A", "C"]}.items():
        se = math.sqrt(sum(variances[n] for n in names)) / len(names)
        assert ci[key][1] - ci[key][0] == pytest.approx(2 * 1.959964 * se, rel=0.15)
    # a group of one dataset is that dataset's interval
    assert ci["vqa"] == ci["per_dataset"]["C"] and ci["ood"] == ci["per_dataset"]["B"]
    assert list(ci["per_dataset"]) == list(hits)


def test_aggregate_cis_of_one_dataset_reduce_to_bootstrap_ci_and_ignore_dict_order() -> None:
    hits = _hits(2, {"C": 50})
    ci = bootstrap_aggregates(hits, MANIFEST, 300, seed=5)
    assert ci["overall"] == ci["per_dataset"]["C"] == bootstrap_ci(hits["C"], 300, seed=5)
    both = _hits(2, {"A": 40, "C": 60})
    reordered = {"C": both["C"], "A": both["A"]}
    assert bootstrap_aggregates(both, MANIFEST, 300, 5)["overall"] == \
        bootstrap_aggregates(reordered, MANIFEST, 300, 5)["overall"]


def test_identical_systems_have_delta_zero_and_p_one() -> None:
    hits = _hits(4, {"A": 80, "B": 120, "C": 60})
    for key, result in paired_bootstrap_groups(hits, dict(hits), MANIFEST, 500, seed=0).items():
        assert result["delta"] == 0.0 and result["ci95"] == (0.0, 0.0) and result["p_value"] == 1.0, key


def test_better_on_every_query_gives_the_smallest_p() -> None:
    b = _hits(5, {"A": 200, "B": 200, "C": 200}, rate=0.5)
    a = {name: np.ones_like(values) for name, values in b.items()}
    result = paired_bootstrap(a, b, MANIFEST, 999, seed=0)
    assert result["p_value"] == pytest.approx(1 / 1000)
    assert result["delta"] == pytest.approx(np.mean([1 - v.mean() for v in b.values()]))
    assert 0 < result["ci95"][0] <= result["delta"] <= result["ci95"][1]


@pytest.mark.parametrize("z", [1.0, 2.0, 2.6])
def test_known_difference_matches_the_normal_approximation(z: float) -> None:
    # one dataset, n queries; a beats b on `wins` queries and loses on the other discordant ones: δ = mean(d) for
    # the per-query differences d ∈ {-1, 0, 1}, se(δ) = std(d) / √n; δ* − δ lives on the lattice k / n, so the
    # normal tail takes a continuity correction of half a step
    n, discordant = 4000, 800
    wins = round(discordant / 2 + z * math.sqrt(discordant) / 2)  # z ≈ (wins − losses) / √discordant
    d = np.zeros(n)
    d[:wins], d[wins:discordant] = 1.0, -1.0
    b = {"A": np.where(d == 1.0, 0.0, np.where(d == -1.0, 1.0, (np.arange(n) % 2).astype(float)))}
    a = {"A": b["A"] + d}
    result = paired_bootstrap(a, b, MANIFEST, SAMPLES, seed=1, key="classification")
    assert result["delta"] == pytest.approx(d.mean())
    se = d.std() / math.sqrt(n)
    assert result["p_value"] == pytest.approx(_normal_p((abs(d.mean()) - 0.5 / n) / se), abs=0.025)
    half = 1.959964 * se
    assert result["ci95"] == pytest.approx((d.mean() - half, d.mean() + half), abs=0.15 * half)
    swapped = paired_bootstrap(b, a, MANIFEST, SAMPLES, seed=1, key="classification")
    assert swapped["delta"] == -result["delta"] and swapped["p_value"] == result["p_value"]


def test_paired_is_deterministic_in_the_seed() -> None:
    a, b = _hits(6, {"A": 100, "C": 100}), _hits(7, {"A": 100, "C": 100})
    first = paired_bootstrap(a, b, MANIFEST, 300, seed=3)
    assert first == paired_bootstrap(a, b, MANIFEST, 300, seed=3)
    assert first["ci95"] != paired_bootstrap(a, b, MANIFEST, 300, seed=4)["ci95"]


def test_paired_errors_name_the_dataset() -> None:
    a = _hits(8, {"A": 10, "C": 10})
    with pytest.raises(ValueError, match=r"\['B'\] not scored by both"):
        paired_bootstrap(a, {**a, "B": np.ones(3)}, MANIFEST, 100, 0)
    with pytest.raises(ValueError, match="dataset 'C' has 10 queries in A, 9 in B"):
        paired_bootstrap(a, {**a, "C": np.ones(9)}, MANIFEST, 100, 0)
    with pytest.raises(ValueError, match="'grounding' has no dataset"):
        paired_bootstrap(a, a, MANIFEST, 100, 0, key="grounding")
    with pytest.raises(ValueError, match="key 'A' is not one of"):
        paired_bootstrap(a, a, MANIFEST, 100, 0, key="A")


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        bootstrap_ci([1.0, 0.0], 0, 0)
    with pytest.raises(ValueError, match="level must lie in"):
        bootstrap_ci([1.0, 0.0], 10, 0, level=95)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci([], 10, 0)
    with pytest.raises(ValueError, match=r"hits dataset 'A'.*finite"):
        bootstrap_aggregates({"A": np.array([1.0, np.nan])}, MANIFEST, 10, 0)
    with pytest.raises(KeyError, match="Z"):
        bootstrap_aggregates({"Z": np.ones(3)}, MANIFEST, 10, 0)


def _write(paths: Paths, variant: str, seed: int, dataset: str, ranks: list[int]) -> None:
    path = paths.eval(variant, seed) / "predictions" / f"{dataset}.jsonl"
    write_predictions(path, list(range(len(ranks))), ranks, [[0]] * len(ranks))


def test_variant_hits_average_seeds_per_query(tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path / "reports")
    _write(paths, "v", 0, "A", [1, 2, 1, 3])
    _write(paths, "v", 1, "A", [1, 1, 4, 2])
    hits = variant_hits(paths, "v", [0, 1], ["A"])
    np.testing.assert_array_equal(hits["A"], [1.0, 0.5, 0.5, 0.0])
    _write(paths, "v", 1, "A", [1, 1, 4])
    with pytest.raises(ValueError, match=r"'A'.*disagree.*seed1/predictions/A\.jsonl': 3"):
        variant_hits(paths, "v", [0, 1], ["A"])
    with pytest.raises(FileNotFoundError, match="seed2"):
        variant_hits(paths, "v", [0, 2], ["A"])
    with pytest.raises(ValueError, match="no seeds"):
        variant_hits(paths, "v", [], ["A"])
