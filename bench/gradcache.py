"""Benchmark: peak RSS of training steps at a large vs a small global batch, with the same GradCache chunk.

Usage: python bench/gradcache.py [--params params/default.yaml] [--variant ssame] [--chunk 16] [--rows 512]
Needs the data and saliency stages' outputs. Each setting runs in a fresh process and sees the same `--rows`
training rows; printed: peak RSS, its increase over the RSS after setup,
and s/step. Target (step 3): peak RSS at batch 256 <= 1.3 x batch 32, same chunk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_one(params_path: str, variant: str, batch: int, chunk: int | None, rows: int) -> dict[str, float]:
    """Child process: train `rows // batch` steps; report peak RSS (MiB) overall and above the post-setup RSS."""
    import torch
    from accelerate.utils import set_seed

    from ssame.config import Paths, load_params
    from ssame.train.batches import BatchOrder, training_rows
    from ssame.train.recipe import build_trainer, make_accelerator

    torch.set_num_threads(1)
    params = load_params(params_path).to_dict()
    params["train"].update(batch_size=batch, grad_cache_chunk_size=chunk)
    set_seed(0)
    _, objective, optimizer, _, _, _ = build_trainer(params, variant, make_accelerator())
    data = training_rows(Paths.from_params(params).data)
    order = BatchOrder(len(data), batch, 0)
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = max(rows // batch, 1)
    start = time.perf_counter()
    for step in range(steps):
        objective.backward(data.iloc[order[step]])
        optimizer.step()
        optimizer.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mib": peak, "above_setup_mib": peak - setup, "s_per_step": (time.perf_counter() - start) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--variant", default="ssame")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, chunk = args.child
        print(json.dumps(run_one(args.params, args.variant, batch, chunk or None, args.rows)))
        return
    settings = [(32, args.chunk), (256, args.chunk), (256, 0)]
    results = {}
    for batch, chunk in settings:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--params", args.params, "--variant", args.variant,
               "--rows", str(args.rows), "--child", str(batch), str(chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[(batch, chunk)] = r = json.loads(out)
        label = f"chunk {chunk}" if chunk else "no GradCache"
        print(f"batch {batch:4d} {label:>13}: peak RSS {r['peak_mib']:7.0f} MiB "
              f"(+{r['above_setup_mib']:5.0f} over setup), {r['s_per_step']:.2f} s/step")
    ratio = results[(256, args.chunk)]["peak_mib"] / results[(32, args.chunk)]["peak_mib"]
    print(f"peak RSS ratio, batch 256 / batch 32 at chunk {args.chunk}: {ratio:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
