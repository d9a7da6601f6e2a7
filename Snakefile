# SSA-ME reproduction: params -> data -> (pretrain) -> (features) -> saliency -> train -> evaluate -> report.
#   snakemake --cores all                                        (embedded offline default: SSA-ME and its ablations)
#   snakemake --cores all seed_systems                           (+ UniME-V2 and MIRe, reports/seed_systems/)
#   snakemake --cores all --config params=params/paper.yaml       (paper profile)
#   snakemake --cores all --config params=params/rehearsal.yaml   (the paper profile rehearsed on a CPU)
#   snakemake --profile workflow/profiles/slurm --config params=params/paper.yaml   (SLURM; docs/scaling.md)
# Every rule is a thin `ssame <stage>` call; all logic lives in src/ssame.
from snakemake.utils import min_version

from ssame.cli import STAGES
from ssame.config import (Paths, all_variants, job_resources, job_threads, load_params, stage_params,
                          uses_image_features, uses_pretrain, variant_mines, variant_uses_saliency)
from ssame.logs import checked_level
from ssame.tracking import close_parent_run, open_parent_run

min_version("9.0")

report: "workflow/report/workflow.rst"  # the HTML report's front page (snakemake --report report.html)

PARAMS_FILE = config.get("params", "params/default.yaml")
LOG_LEVEL = checked_level(config.get("log_level", "INFO"))  # every job's log: --config log_level=DEBUG (or WARNING)
# Validated against workflow/schemas/params.schema.yaml, with the schema's defaults, before any job runs.
P = load_params(PARAMS_FILE).to_dict()

R = P["results_dir"]
REPORTS = P["reports_dir"]
SEED_SYSTEMS_REPORTS = Paths.from_params(P).report(seed_systems=True).as_posix()  # target seed_systems's report
VARIANTS = P["train"]["variants"]  # target all; target seed_systems adds train.seed_systems
SEED_SYSTEMS = P["train"]["seed_systems"]
SEEDS = P["train"]["seeds"]
# Per rule: threads, resources (mem_mb, runtime, gpu per node, nodes) and retries, from params `resources`.
THREADS = {rule: job_threads(P, rule) for rule in STAGES}  # one rule per stage
RESOURCES = {rule: job_resources(P, rule) for rule in THREADS}
RETRIES = P["resources"]["retries"]
BENCH = f"{R}/benchmarks"  # Snakemake's benchmark files: each job's wall time, memory and I/O
LOCAL = set(P["resources"]["local_rules"])  # under a cluster executor these run on the submitting host

wildcard_constraints:
    variant="|".join(all_variants(P)),
    seed=r"\d+",

def mirror_if_rehearsal(wildcards):
    """The rehearsal's local hub mirror (params `mirror:`), or [] for the real hub / MMEB-mini."""
    return rules.mirror.output.done if P["mirror"] else []


def pretrained_if_used(wildcards):
    """The pretrained tiny backbone every training job starts from, or [] (random init, or a hub backbone)."""
    return rules.pretrain.output.model if uses_pretrain(P) else []


def features_if_used(wildcards):
    """The frozen vision tower's image features that train, mine and evaluate jobs read, or [] (pixels)."""
    return rules.features.output.record if uses_image_features(P) else []


def mined_if_used(wildcards):
    """The seed's mined negatives for variants that train on them (UniME-V2), else []."""
    return rules.mine.output.negatives if variant_mines(P["variants"][wildcards.variant]) else []


def saliency_if_used(wildcards):
    """The saliency manifest for variants that read it; [] lets baseline jobs start while saliency runs."""
    return rules.saliency.output.manifest if variant_uses_saliency(P["variants"][wildcards.variant]) else []


if P["mirror"]:
    include: "workflow/rules/mirror.smk"
include: "workflow/rules/data.smk"
if uses_pretrain(P):
    include: "workflow/rules/pretrain.smk"
if uses_image_features(P):
    include: "workflow/rules/features.smk"
include: "workflow/rules/saliency.smk"
if any(variant_mines(P["variants"][v]) for v in all_variants(P)):
    include: "workflow/rules/mine.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# One MLflow run per invocation that has jobs to run (not on a dry run); every job's run is its child.
onstart:
    open_parent_run(P, PARAMS_FILE)


onsuccess:
    close_parent_run(P, "FINISHED")


onerror:
    close_parent_run(P, "FAILED")


rule all:
    default_target: True
    input:
        rules.report.output,


if SEED_SYSTEMS:
    rule seed_systems:  # snakemake --cores all seed_systems
        input:
            rules.report_seed_systems.output,
