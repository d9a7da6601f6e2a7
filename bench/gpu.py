"""Benchmark: the paper's training step on one GPU — Qwen2-VL-2B at its published dimensions, random init.

Usage: python bench/gpu.py [--variant ssame] [--steps 5] [--peak-tflops F] [--smoke]
Without a CUDA device it says so and exits 0 (`--smoke` runs the same code on the CPU with the rehearsal's tiny
dimensions, to check the path). On a GPU: the backbone is built from the published Qwen2-VL-2B-Instruct config (no
download), saved and loaded through the paper's own `from_pretrained` path, and trained with params/paper.yaml's
switches (bf16, SDPA, gradient checkpointing, LoRA, GradCache chunk 16, hard negatives, images resized to 1344²) on
synthetic MMEB-style rows (query image + instruction, text positive, text hard negative; synthetic saliency maps).
Printed:
  - at the paper's per-device batch (global 1024 / 8 GPUs = 128): s/step, samples/s, peak memory, model FLOPs
    utilisation (MFU: 6 x parameters x tokens per step, the usual convention, over the device's dense bf16 peak;
    GradCache's second forward and checkpointing's recompute are extra hardware work it does not count);
  - the peak memory of one step at global batch 1024 vs 64 on this one device (GradCache keeps it flat).
Target (step 5): MFU >= 40 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Qwen/Qwen2-VL-2B-Instruct config.json (text and vision towers); the vocabulary keeps its published size.
QWEN2_VL_2B = {
    "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "vocab_size": 151936,
             "rms_norm_eps": 1e-6,
             "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}},
    "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2},
}
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0}  # dense, SXM where applicable
IMAGES = 64  # distinct synthetic images (the preprocessing cost per image is that of any photo at 1344²)


def write_backbone(folder: Path, smoke: bool) -> None:
    """The backbone folder the paper path loads: the published (or, with smoke, the rehearsal's tiny) Qwen2-VL-2B
    config, random init in bf16, written by the rehearsal's own model writer (tokenizer, image processor)."""
    from ssame.rehearsal.models import write_qwen2_vl

    dims = {} if smoke else {"text": QWEN2_VL_2B["text"], "vision": QWEN2_VL_2B["vision"]}
    write_qwen2_vl(folder, seed=0, tie_word_embeddings=True, device="cpu" if smoke else "cuda", dtype=torch.bfloat16,
                   **dims)


def write_rows(params: dict, rows: int) -> None:
    """`rows` MMEB-train-style rows over IMAGES synthetic photos, written with the data stage's own writers."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from ssame.config import Paths
    from ssame.data import io

    data = Paths.from_params(params).data
    folder = io.image_root(data) / "bench"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    frame = pd.DataFrame({
        "qry": [f"{io.IMAGE_TOKEN}\nRepresent the given image with the following question: what is the red "
                f"object next to the {k}th tree in the picture?\n" for k in range(rows)],
        "qry_image_path": [f"bench/{k % IMAGES}.jpg" for k in range(rows)],
        "pos_text": [f"a red bird on a branch, number {k}\n" for k in range(rows)],
        "pos_image_path": [""] * rows,
        "neg_text": [f"red flowers in a garden, number {k}\n" for k in range(rows)],
        "neg_image_path": [""] * rows})
    io.write_train(data, "BenchVQA", frame)
    io.write_manifest(data, [{"dataset": "BenchVQA", "meta_task": "vqa", "split": "IND", "num_candidates": 1000,
                              "num_queries": 0, "train_rows": rows}])


def bench_params(work: Path, smoke: bool, batch: int, steps: int) -> dict:
    """params/paper.yaml with the bench's backbone folder, batch and steps (everything else the paper's)."""
    from ssame.config import load_params

    params = load_params(REPO / "params" / "paper.yaml").to_dict()
    params["results_dir"] = str(work / "results")
    params["tracking"]["mlflow_db"] = str(work / "mlflow" / "mlflow.db")
    params["model"].update(backbone=str(work / "backbone"), revision=None)
    if smoke:
        params["model"]["image_side"] = 56
        params["saliency"]["map_size"] = 32
    params["train"].update(batch_size=batch, steps=steps, warmup_steps=1, checkpoint_every=None, num_workers=2)
    return params


def measure(params: dict, variant: str, steps: int) -> dict[str, float]:
    """Mean s/step over `steps` steps after one warm-up step, peak memory (GiB) and tokens/patches per step."""
    from accelerate.utils import set_seed

    from ssame.config import Paths
    from ssame.train.batches import BatchOrder, training_rows
    from ssame.train.data import StepDataset, step_loader
    from ssame.train.recipe import build_trainer, make_accelerator

    set_seed(0)
    accelerator = make_accelerator()
    embedder, objective, optimizer, scheduler, *_ = build_trainer(params, variant, accelerator)
    cfg = params["train"]
    rows = objective.annotate(training_rows(Paths.from_params(params).data))
    dataset = StepDataset(rows, BatchOrder(len(rows), cfg["batch_size"], 0), objective.preparer, 1, 0,
                          cfg["grad_cache_chunk_size"], steps + 1)
    loader = step_loader(dataset, 0, cfg["num_workers"], accelerator.device.type == "cuda")
    cuda = accelerator.device.type == "cuda"
    times, tokens, patches = [], 0, 0
    for step, batch in enumerate(loader):
        if cuda:
            torch.cuda.synchronize()
        tick = time.perf_counter()
        objective.backward(batch)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        if not step:  # the first step warms kernels and allocators up
            continue
        times.append(time.perf_counter() - tick)
        inputs = [encoded.inputs for chunk in batch.chunks for encoded in chunk.batches.values()]
        tokens += sum(int(x["attention_mask"].sum()) for x in inputs)
        patches += sum(int(x["pixel_values"].shape[0]) for x in inputs if "pixel_values" in x)
    qwen = accelerator.unwrap_model(embedder).qwen
    vision = sum(p.numel() for p in qwen.model.visual.parameters())
    text = sum(p.numel() for n, p in qwen.model.language_model.named_parameters() if "lora_" not in n)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    n = len(times)
    return {"seconds": sum(times) / n, "tokens": tokens / n, "patches": patches / n, "peak_gib": peak,
            "text_params": text, "vision_params": vision}


def peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run(args: argparse.Namespace) -> None:
    per_device, chunk = (8, 2) if args.smoke else (128, 16)
    with tempfile.TemporaryDirectory(prefix="ssame-gpu-bench-") as tmp:
        work = Path(tmp)
        write_backbone(work / "backbone", args.smoke)
        big = bench_params(work, args.smoke, per_device, args.steps + 1)
        big["train"]["grad_cache_chunk_size"] = chunk
        write_rows(big, max(1024, 2 * per_device) if not args.smoke else 32)
        if args.variant != "baseline":
            sys.path.insert(0, str(Path(__file__).parent))
            from memory import synthetic_saliency

            synthetic_saliency(big)
        result = measure(big, args.variant, args.steps)
        flops = 6 * (result["text_params"] * result["tokens"] + result["vision_params"] * result["patches"])
        print(f"variant {args.variant}, per-device batch {per_device}, GradCache chunk {chunk}, "
              f"{result['tokens']:.0f} decoder tokens + {result['patches']:.0f} vision patches per step")
        memory = f"{result['peak_gib']:.1f} GiB" if result["peak_gib"] == result["peak_gib"] else "n/a on the CPU"
        print(f"s/step {result['seconds']:.3f}  samples/s {per_device / result['seconds']:.1f}  peak memory {memory}")
        peak = None if args.smoke else peak_tflops(args.peak_tflops)
        if peak:
            print(f"MFU {100 * flops / result['seconds'] / (peak * 1e12):.1f} % "
                  f"({flops / result['seconds'] / 1e12:.1f} model TFLOP/s of {peak} peak)")
        else:
            print(f"model TFLOP/s {flops / result['seconds'] / 1e12:.3f} (MFU needs --peak-tflops)")
        if args.smoke:
            return
        for global_batch in (64, 1024):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            params = bench_params(work, False, global_batch, 2)
            params["train"]["grad_cache_chunk_size"] = chunk
            result = measure(params, args.variant, 1)
            print(f"global batch {global_batch:5d} on one device: peak memory {result['peak_gib']:.1f} GiB, "
                  f"s/step {result['seconds']:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="ssame")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak, TFLOP/s")
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny dimensions")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("bench/gpu.py: no CUDA device here; it measures the paper backbone on a GPU (run it on one; "
              "--smoke runs the same code on the CPU with tiny dimensions)")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
