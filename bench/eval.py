"""Benchmark: evaluation throughput (inputs/s) and the forward-pass ratio on MMEB-mini.

Usage: python bench/eval.py [--params params/default.yaml] [--variant ssame] [--seed 0] [--threads 1]
Needs the data, saliency and train stages' outputs (run the pipeline first). Evaluates into a temporary results
folder that links to them, so the pipeline's own eval files are untouched. Prints per dataset: unique inputs,
the encodings a row-by-row implementation would make, forward passes, their ratio to unique inputs (target 1.00)
and inputs/s of the encoding; then the totals.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from ssame.config import Paths, load_params
from ssame.data.io import read_manifest
from ssame.evaluate import DatasetEvaluator


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--params", default="params/default.yaml")
    cli.add_argument("--variant", default="ssame")
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--threads", type=int, default=1)
    args = cli.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    source = Paths.from_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        params = copy.deepcopy(params)
        params["results_dir"] = tmp
        for stage in ("data", "saliency", "train"):
            (Path(tmp) / stage).symlink_to((source.results / stage).resolve())
        start = time.perf_counter()
        evaluator = DatasetEvaluator(params, args.variant, args.seed)
        load_seconds = time.perf_counter() - start
        manifest = read_manifest(source.data)
        print(f"{'dataset':<20} {'unique':>7} {'row-by-row':>10} {'forwards':>8} {'ratio':>6} {'inputs/s':>9}")
        totals = {"unique": 0, "refs": 0, "forwards": 0, "seconds": 0.0}
        for row in manifest[manifest["num_queries"] > 0].itertuples():
            record, _, seconds = evaluator(row)
            unique = record["unique_queries"] + record["unique_candidates"]
            print(f"{row.dataset:<20} {unique:>7} {record['input_references']:>10} {record['forward_passes']:>8} "
                  f"{record['forward_ratio']:>6.2f} {record['forward_passes'] / seconds:>9.1f}")
            for key, value in (("unique", unique), ("refs", record["input_references"]),
                               ("forwards", record["forward_passes"]), ("seconds", seconds)):
                totals[key] += value
        print(f"{'total':<20} {totals['unique']:>7} {totals['refs']:>10} {totals['forwards']:>8} "
              f"{totals['forwards'] / totals['unique']:>6.2f} {totals['forwards'] / totals['seconds']:>9.1f}")
        print(f"model load {load_seconds:.1f} s; encoding {totals['seconds']:.1f} s with {args.threads} thread(s), "
              f"batch {params['evaluate']['batch_size']}; row-by-row would encode "
              f"{totals['refs'] / totals['forwards']:.1f}x as many inputs")


if __name__ == "__main__":
    main()
