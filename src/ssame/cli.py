"""`ssame <stage>`: one subcommand per pipeline stage; Snakemake rules call these."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssame.config import ParamsError, Paths, load_params, pretrained_backbone, uses_image_features
from ssame.logs import LEVELS, setup

STAGES: dict[str, str] = {
    "mirror": "rehearsal only: write a local stand-in for the hub (MMEB repos and tiny models) under mirror.dir",
    "data": "build the benchmark (MMEB-mini, or MMEB from the hub) and the offline tokenizer",
    "pretrain": "tiny backbone only: next-token pretraining on scene captions and answers, before fine-tuning",
    "features": "model.image_features cached: the frozen vision tower's features of every benchmark image, once",
    "saliency": "saliency maps for every image and subject phrases for every text",
    "mine": "UniME-V2: judged hard negatives of every training query for one seed, mined with its miner's model",
    "train": "train one (variant, seed); run it under `accelerate launch -m ssame train ...`",
    "evaluate": "MMEB protocol hit@1 of one trained (variant, seed)",
    "report": "tables and figures from every evaluated (variant, seed)",
}
LAUNCH_HELP = "run one job of a stage with its GPUs, port and nodes (what the Snakemake rules call): ssame launch -h"
DVC_HELP = "write dvc.yaml from the Snakemake DAG of a params file: ssame dvc-yaml -h"


def _run(stage: str, params: dict[str, Any], args: argparse.Namespace) -> None:
    """Import lazily so `ssame --help` stays fast and a stage pulls in only what it needs."""
    if stage == "mirror":
        from ssame.rehearsal.stage import build
    elif stage == "data":
        from ssame.data import build
    elif stage == "pretrain":  # tracks its own run (per-step metrics)
        from ssame.pretrain import build

        build(params)
        return
    elif stage == "features":
        from ssame.features import build
    elif stage == "saliency":
        from ssame.saliency import build
    elif stage == "report":
        from ssame.report import build as report

        scope = {"scope": "seed_systems"} if args.seed_systems else None
        _tracked(stage, lambda p: report(p, args.seed_systems), params, scope,
                 reports=Paths.from_params(params).report(args.seed_systems))
        return
    elif stage == "mine":
        from ssame.mine import build as mine

        _tracked(stage, lambda p: mine(p, args.seed), params, {"seed": str(args.seed)})
        return
    else:
        _check_run(params, args)
        if stage == "train":
            from ssame.train import train as run_one
        else:
            from ssame.evaluate import evaluate as run_one
        run_one(params, args.variant, args.seed)
        return
    _tracked(stage, build, params)


def _tracked(stage: str, build: Callable[[Any], Any], params: Any, wildcards: dict[str, str] | None = None,
             reports: Path | None = None) -> None:
    """Run a whole-stage build inside its MLflow run (a child of the snakemake invocation's) and log the files
    that summarise its outputs as artifacts (a report: its tables/ and figures/ under `reports`)."""
    from ssame.tracking import job_tags, mlflow_run

    paths = Paths.from_params(params)
    seed = int((wildcards or {}).get("seed", 0))
    name = "/".join([stage, *(f"seed{v}" if k == "seed" else v for k, v in (wildcards or {}).items())])
    with mlflow_run(params, name, job_tags(params, stage, wildcards, inputs=_inputs(stage, params, seed))) as mlflow:
        figures = build(params)
        if isinstance(figures, dict):
            mlflow.log_metrics({k: float(v) for k, v in figures.items() if isinstance(v, int | float)})
        summaries = {"data": [paths.data / n for n in ("manifest.csv", "eval_checks.json", "unreadable.json")],
                     "features": [paths.features / "features.json"],
                     "saliency": [paths.saliency / n for n in ("manifest.json", "quality.csv")],
                     "mine": [paths.mine(seed) / "stats.json"]}.get(stage, [])
        for path in summaries:
            mlflow.log_artifact(str(path))
        for folder in ("tables", "figures") if reports else ():
            mlflow.log_artifacts(str(reports / folder), artifact_path=folder)


def _inputs(stage: str, params: Any, seed: int) -> dict[str, Path]:
    """The files a whole-stage job reads, by name, for its run's input digests (train and evaluate list their own)."""
    paths = Paths.from_params(params)
    inputs = {"data_manifest": paths.data / "manifest.csv"} if stage in ("features", "saliency", "mine") else {}
    if stage == "features" and (pretrained := pretrained_backbone(params)):
        inputs["pretrained"] = pretrained
    if stage == "mine":
        inputs["miner_model"] = paths.model(params["mine"]["miner"], seed)
        if uses_image_features(params):
            inputs["image_features"] = paths.features
    return inputs


def _check_run(params: dict[str, Any], args: argparse.Namespace) -> None:
    if args.variant not in params["variants"]:
        raise ParamsError(f"--variant '{args.variant}' is not a key of 'variants' ({sorted(params['variants'])})")


def version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    from importlib.metadata import version as installed

    return installed("ssame")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ssame", description="SSA-ME reproduction pipeline (MMEB).",
                                  epilog=f"ssame launch STAGE ...: {LAUNCH_HELP}; ssame dvc-yaml: {DVC_HELP}")
    top.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subs = top.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, help_text in STAGES.items():
        sub = subs.add_parser(stage, help=help_text, description=help_text)
        sub.add_argument("--params", default="params/default.yaml", help="params YAML (default: %(default)s)")
        sub.add_argument("--threads", type=int, default=None,
                         help="CPU threads of the job, split among its processes (default: torch's own)")
        sub.add_argument("--log-level", default="INFO", choices=LEVELS, type=str.upper,
                         help="least severe log records written (default: %(default)s)")
        if stage in ("train", "evaluate"):
            sub.add_argument("--variant", required=True, help="a key of the params' `variants`")
        if stage == "report":
            sub.add_argument("--seed-systems", action="store_true",
                             help="report train.variants and train.seed_systems under reports_dir/seed_systems "
                                  "(target seed_systems)")
        if stage in ("train", "evaluate", "mine"):
            sub.add_argument("--seed", type=int, required=True, help="training seed")
    return top


def main(argv: list[str] | None = None, run: Callable[..., None] = _run) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        from ssame.launch import main as launch

        return launch(argv[1:])
    if argv[:1] == ["dvc-yaml"]:
        from ssame.dvc_yaml import main as dvc_yaml

        return dvc_yaml(argv[1:])
    args = parser().parse_args(argv)
    setup(args.log_level)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"ssame {args.stage}: {err}", file=sys.stderr)
        return 2
    if args.threads:  # the job's CPU share, split among the processes a launcher started
        import os

        import torch

        local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE", "1")  # processes on this node
        torch.set_num_threads(max(1, args.threads // int(local)))
    from ssame.atomic import WriteError

    try:
        run(args.stage, params, args)
    except WriteError as err:  # disk full, quota, permissions: one line naming the file, not a traceback
        print(f"ssame {args.stage}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
