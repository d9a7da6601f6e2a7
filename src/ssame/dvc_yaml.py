"""`ssame dvc-yaml`: the DVC pipeline generated from the Snakemake DAG, so the two can never disagree.

One DVC stage per Snakemake job of the params' `rule all`, with the job's own shell command (its log redirection
dropped: under DVC the log goes to the terminal), its input files as deps, its output files as outs and the params
keys of its rule's `params: depends=` (`ssame.config.stage_params`). DVC-only knowledge lives here:
- which package code a stage runs (`CODE`, and the params schema in src/ssame/config: DVC reruns a stage when
  they change; Snakemake does not track them);
- a whole-stage job (data, pretrain, saliency, mirror) owns its folder: the folder is the out, so files the stage
  writes beside its declared outputs (the saliency shard cache, the tokenizer) are versioned too; `PERSIST` folders
  are kept by `dvc repro` (the stage reuses them);
- which outputs are metrics or plots; outputs under the params' `reports_dir` are committed to git (`cache: false`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ssame.config import Paths, load_params, reported_variants, variant_labels

CODE = {
    "mirror": ["src/ssame/rehearsal"],
    "data": ["src/ssame/data"],
    "pretrain": ["src/ssame/pretrain", "src/ssame/model"],
    "features": ["src/ssame/features", "src/ssame/model"],
    "saliency": ["src/ssame/saliency"],
    "mine": ["src/ssame/mine", "src/ssame/model", "src/ssame/evaluate/encode.py", "src/ssame/features/store.py"],
    "train": ["src/ssame/train", "src/ssame/model", "src/ssame/losses.py", "src/ssame/mine/negatives.py",
              "src/ssame/features/store.py"],
    "evaluate": ["src/ssame/evaluate", "src/ssame/model", "src/ssame/features/store.py"],
    "report": ["src/ssame/report"],
    "report_seed_systems": ["src/ssame/report"],
}
STAGE_OF_RULE = {"report_seed_systems": "report"}  # rules that run a stage under another name
TARGETS = ("all", "seed_systems")  # the Snakefile's targets (seed_systems only when params name seed systems)
WHOLE_FOLDER = ("mirror", "data", "pretrain", "features", "saliency")  # jobs that write one folder of their own
PERSIST = ("saliency",)  # its shard cache: the stage reuses every shard whose fingerprint still matches
METRICS = {("train", "metrics"), ("evaluate", "aggregate")}  # (rule, output name)
PLOTS = {("train", "history"): {"x": "step", "y": "loss"}}


@dataclass(frozen=True)
class Job:
    """What DVC needs of one Snakemake job."""

    rule: str
    wildcards: dict[str, str]
    inputs: list[str]
    outputs: list[tuple[str, str]]  # (output name, or "" when unnamed; path), in the rule's order
    log: str | None
    shellcmd: str
    params: dict[str, Any]  # the rule's `depends` params: dotted key -> value


def snakemake_jobs(params_file: str, root: Path = Path()) -> list[Job]:
    """Every job of the workflow's targets (TARGETS) under `params_file`, as if nothing had run (forceall).

    Snakemake 9 has no public API for the job list; this reads its DAG the way `--summary` does (pinned: <10)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(config={"params": params_file}),
                                    snakefile=root / "Snakefile", workdir=root)
        workflow = workflow_api._workflow  # parses the Snakefile once
        targets = {rule for rule in TARGETS if workflow.is_rule(rule)}
        workflow_api.dag(dag_settings=DAGSettings(targets=targets, forceall=True))  # sets the workflow's DAG settings
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        jobs = []
        for job in workflow.dag.jobs:
            if job.rule.norun:  # `rule all`
                continue
            names = {}  # a named multiext() output is a list of files under one name
            for name, value in job.output._allitems():
                for path in value if isinstance(value, list) else [value]:
                    names.setdefault(str(path), name or "")
            outputs = [(names.get(str(path), ""), str(path)) for path in job.output]
            logs = [str(p) for p in job.log]
            jobs.append(Job(job.rule.name, dict(job.wildcards_dict), [str(p) for p in job.input], outputs,
                            logs[0] if logs else None, job.shellcmd, dict(job.params.get("depends", {}))))
    return sorted(jobs, key=_dag_order)


def _dag_order(job: Job) -> tuple:
    """Stages in pipeline order, then by wildcard (numbers as numbers: seed 2 before seed 10)."""
    from ssame.cli import STAGES

    values = tuple((0, int(v), "") if v.isdigit() else (1, 0, v) for v in job.wildcards.values())
    return (list(STAGES).index(STAGE_OF_RULE.get(job.rule, job.rule)), job.rule, values)


def stage_name(job: Job) -> str:
    """`train_variant-ssame_seed-0`: DVC stage names allow letters, digits, '_' and '-' only."""
    return "_".join([job.rule, *(f"{key}-{value}" for key, value in job.wildcards.items())])


def _command(job: Job) -> str:
    if job.log is None:
        return job.shellcmd.strip()
    redirect = f" > {job.log} 2>&1"
    if not job.shellcmd.rstrip().endswith(redirect):
        raise ValueError(f"rule {job.rule}: its shell command must end with '{redirect.strip()}' (its log) for "
                         f"DVC to run it with the log on the terminal: {job.shellcmd!r}")
    return job.shellcmd.rstrip()[: -len(redirect)].strip()


def _folder(outputs: list[tuple[str, str]]) -> str:
    paths = [path for _, path in outputs]
    parents = [PurePosixPath(p).parent for p in paths]
    common = parents[0]
    while not all(common == p or common in p.parents for p in parents):
        common = common.parent
    if str(common) in ("", "."):
        raise ValueError(f"outputs {sorted(paths)} share no folder")
    return str(common)


def _owner(path: str, folders: dict[str, str]) -> str:
    """`path` itself, or the whole-stage folder it lies in (a dep on a file inside another stage's out)."""
    for folder in folders:
        if path == folder or PurePosixPath(folder) in PurePosixPath(path).parents:
            return folder
    return path


def _written(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def dvc_pipeline(jobs: list[Job], params_file: str, raw_params: dict[str, Any], reports_dir: str,
                 per_dataset: dict[str, tuple[str, list[str]]]) -> dict[str, Any]:
    """The dvc.yaml document for `jobs`. DVC reads params keys from the file as written (`raw_params`): a key
    left to its schema default is covered by the code dep on src/ssame/config, which holds the schema.
    `per_dataset`: plot name -> (a report's per-dataset table, its variant columns), plotted when a job writes it."""
    folders = {_folder(job.outputs): job.rule for job in jobs if job.rule in WHOLE_FOLDER}
    stages: dict[str, Any] = {}
    for job in jobs:
        stage: dict[str, Any] = {"cmd": _command(job)}
        deps = dict.fromkeys(_owner(p, folders) for p in job.inputs)
        stage["deps"] = [*deps, *CODE[job.rule], "src/ssame/config"]
        keys = [key for key in job.params if _written(raw_params, key)]
        if keys:
            stage["params"] = [{params_file: keys}]
        outs, metrics, plots = [], [], []
        if job.rule in WHOLE_FOLDER:
            folder = _folder(job.outputs)
            outs.append({folder: {"persist": True}} if job.rule in PERSIST else folder)
        else:
            for name, path in job.outputs:
                if (job.rule, name) in METRICS:
                    metrics.append(path)
                elif (job.rule, name) in PLOTS:
                    plots.append({path: dict(PLOTS[job.rule, name])})
                elif PurePosixPath(reports_dir) in PurePosixPath(path).parents:
                    outs.append({path: {"cache": False}})  # committed to git (the repository's reports/)
                else:
                    outs.append(path)
        for key, value in (("outs", outs), ("metrics", metrics), ("plots", plots)):
            if value:
                stage[key] = value
        stages[stage_name(job)] = stage
    document: dict[str, Any] = {"stages": stages}
    written = {path for job in jobs for _, path in job.outputs}
    plots = [{name: {"template": "simple", "x": "dataset", "y": {path: columns}}}
             for name, (path, columns) in per_dataset.items() if path in written]
    if plots:
        document["plots"] = plots
    return document


def header(params_file: str) -> str:
    return (f"# Generated from the Snakemake DAG of {params_file} by `ssame dvc-yaml --params {params_file}`: do not\n"
            "# edit; regenerate after changing the workflow or the params' variants or seeds (a test checks it).\n"
            "# After `snakemake --cores all`: `dvc commit -f` records the outputs, `dvc push` stores them in the\n"
            "# default remote. In a fresh clone: `dvc pull`, then `snakemake --touch --cores 1` (docs/tracking.md).\n")


def render(params_file: str, root: Path = Path()) -> str:
    """dvc.yaml's text for `params_file` (a path relative to `root`, the project holding the Snakefile)."""
    params = load_params(root / params_file)
    raw = yaml.safe_load((root / params_file).read_text())
    labels, paths = variant_labels(params), Paths.from_params(params)  # labels: the per-dataset tables' columns
    per_dataset = {name: ((paths.report(scope) / "tables" / "per_dataset.csv").as_posix(),
                          [labels[v] for v in reported_variants(params, scope)])
                   for name, scope in (("per_dataset_hit_at_1", False), ("per_dataset_hit_at_1_seed_systems", True))}
    document = dvc_pipeline(snakemake_jobs(params_file, root), params_file, raw, params["reports_dir"], per_dataset)
    return header(params_file) + yaml.safe_dump(document, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(prog="ssame dvc-yaml", description=__doc__.splitlines()[0])
    args.add_argument("--params", default="params/default.yaml", help="params YAML (default: %(default)s)")
    args.add_argument("--output", default="dvc.yaml", help="file to write (default: %(default)s)")
    args.add_argument("--check", action="store_true", help="write nothing; exit 1 when --output is out of date")
    opts = args.parse_args(argv)
    text = render(opts.params)
    target = Path(opts.output)
    if opts.check:
        if not target.is_file() or target.read_text() != text:
            print(f"ssame dvc-yaml: {target} is out of date with the Snakemake DAG of {opts.params}; "
                  f"run: ssame dvc-yaml --params {opts.params} --output {target}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0
