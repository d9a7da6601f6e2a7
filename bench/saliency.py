"""Benchmark: images/s of each offline saliency expert and of the fusion, on MMEB-mini images.

Usage: python bench/saliency.py [--params params/default.yaml] [--images 256]
Needs the data stage's output (results/data). Prints one line per method.
"""

from __future__ import annotations

import argparse
import time

from ssame.config import Paths, load_params
from ssame.data.io import read_eval, read_manifest
from ssame.saliency.experts import build_expert, read_image
from ssame.saliency.fusion import Fusion
from ssame.saliency.subjects import build_subjects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, data_dir = params["saliency"], Paths.from_params(params).data
    pairs = []
    for dataset in read_manifest(data_dir)["dataset"]:
        frame = read_eval(data_dir, dataset)
        pairs += [(t, i) for t, i in zip(frame["qry_text"], frame["qry_img_path"], strict=True) if i]
    pairs = pairs[:: max(1, len(pairs) // args.images)][: args.images]
    images = [read_image(data_dir / "images" / image) for _, image in pairs]
    phrases = build_subjects(cfg["subjects"], data_dir)([text for text, _ in pairs])
    methods = {name: build_expert(name) for name in ["spectral_residual", "fine_grained", "colour_terms"]}
    methods["fusion"] = Fusion(build_expert(cfg["bottom_up"]), [build_expert(n) for n in cfg["relevance"]],
                               cfg["fusion_floor"])
    print(f"{len(images)} query images ({images[0].shape[1]}x{images[0].shape[0]}), "
          f"{sum(bool(p) for p in phrases)} with subject phrases")
    for name, method in methods.items():
        start = time.perf_counter()
        method(images, phrases)
        print(f"{name:18s} {len(images) / (time.perf_counter() - start):8.1f} images/s")


if __name__ == "__main__":
    main()
