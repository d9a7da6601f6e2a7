"""Benchmark: peak RSS of a training job at 1x, 4x and 16x the number of distinct training images.

Usage: python bench/memory.py [--base-rows 96] [--steps 60] [--workers 0] [--keep DIR]
Builds MMEB-mini at `train_rows_per_dataset` = base, 4 x base and 16 x base (base 96 = a quarter of the default
profile's 384, so 4x is the default) in a scratch folder, writes saliency shards with synthetic maps for every image
and every (text, image) pair of the training rows (instead of running the saliency stage, to keep the bench short)
and the features stage's image features (of a backbone pretrained for two steps), then trains the `ssame`
variant (default profile otherwise: batch 16, all loss terms) for a fixed number of steps in a fresh process per
scale. Printed per scale: training rows, distinct images, peak RSS of the training process
(and of its DataLoader workers, with --workers); then the largest / smallest peak. Target (step 5): flat within 10 %.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALES = (1, 4, 16)
SUBJECT = "the object"  # synthetic subject phrase of every pair


def synthetic_saliency(params: dict) -> None:
    """Shards with random maps for every image and every training (text, image) pair, plus the manifest."""
    import numpy as np

    from ssame.config import Paths
    from ssame.data.io import read_manifest, read_train
    from ssame.saliency.store import write_shard, write_subjects

    paths, size = Paths.from_params(params), params["saliency"]["map_size"]
    shards = paths.saliency / "shards"
    rng = np.random.default_rng(0)
    names = []
    for row in read_manifest(paths.data).itertuples():
        if not row.train_rows:
            continue
        train = read_train(paths.data, row.dataset)
        pairs = {(t, i) for side in (("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                     ("neg_text", "neg_image_path"))
                 for t, i in zip(train[side[0]], train[side[1]], strict=True) if i}
        images = {i for _, i in pairs}
        maps = {i: rng.random((size, size), dtype=np.float32) for i in sorted(images)}
        pair_maps = {k: rng.random((size, size), dtype=np.float32) for k in sorted(pairs) if k[0].strip()}
        write_shard(shards, row.dataset, maps, pair_maps, size, dict.fromkeys(pair_maps, SUBJECT))
        write_subjects(shards / f"{row.dataset}.subjects.jsonl", [(t, i, [SUBJECT]) for t, i in sorted(pair_maps)])
        names.append(row.dataset)
    (paths.saliency / "manifest.json").write_text(json.dumps({"shards": names, "synthetic": True}) + "\n")


def distinct_images(params: dict) -> tuple[int, int]:
    """(training rows, distinct images they reference)."""
    from ssame.config import Paths
    from ssame.train.batches import training_rows

    rows = training_rows(Paths.from_params(params).data)
    images = set(rows["qry_image_path"]) | set(rows["pos_image_path"]) | set(rows["neg_image_path"])
    return len(rows), len(images - {""})


def _peak_mib() -> float:
    """This process's peak RSS in MiB: /proc's VmHWM, which exec resets; ru_maxrss keeps the high-water mark of the
    process that forked this one (here the bench, which has built the data, pretrained and encoded the images)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the kernel's own figure


def job(params_file: str) -> dict[str, float]:
    """Child process: train, then report this process's peak RSS and its workers' (MiB)."""
    import torch

    from ssame.train import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    train(json.loads(Path(params_file).read_text()), "ssame", 0)
    return {"peak_mib": _peak_mib(),
            "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-rows", type=int, default=96, help="train_rows_per_dataset at 1x")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=0, help="train.num_workers")
    parser.add_argument("--keep", type=Path, help="build in (and keep) this folder instead of a temporary one")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(job(args.job)))
        return
    from ssame import data, features, pretrain
    from ssame.config import load_params

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="ssame-memory-"))
    results = {}
    for scale in SCALES:
        params = copy.deepcopy(load_params(REPO / "params" / "default.yaml"))
        root = scratch / f"x{scale}"
        params["results_dir"] = str(root / "results")
        params["tracking"]["mlflow_db"] = str(root / "mlflow" / "mlflow.db")
        params["data"]["mini"].update(train_rows_per_dataset=args.base_rows * scale, eval_queries_per_dataset=4)
        params["train"].update(steps=args.steps, checkpoint_every=None, num_workers=args.workers)
        # a barely pretrained backbone: a job's memory does not depend on its weights
        params["pretrain"].update(steps=2, scenes=4, batch_size=4, warmup_steps=1, probe_scenes=0)
        if not (root / "results" / "saliency" / "manifest.json").is_file():
            data.build(params)
            synthetic_saliency(params)
            pretrain.build(params)
            features.build(params)  # the default profile's image features (model.image_features: cached)
        (root / "params.json").write_text(json.dumps(params))
        rows, images = distinct_images(params)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--job", str(root / "params.json")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"training at {scale}x failed:\n{done.stderr[-3000:]}")
        results[scale] = r = json.loads(done.stdout.strip().splitlines()[-1])
        workers = f", workers' peak {r['worker_peak_mib']:6.0f} MiB" if args.workers else ""
        print(f"{scale:2d}x: {rows:6d} training rows, {images:6d} distinct images: peak RSS "
              f"{r['peak_mib']:6.0f} MiB{workers} ({args.steps} steps in {r['seconds']:.0f} s)", flush=True)
    peaks = [r["peak_mib"] for r in results.values()]
    print(f"peak RSS, largest / smallest over {SCALES[0]}x-{SCALES[-1]}x: {max(peaks) / min(peaks):.3f} "
          f"(target <= 1.10)")


if __name__ == "__main__":
    main()
