# SSA-ME reproduction: params -> data -> saliency -> train -> evaluate -> report.
#   snakemake --cores all                                        (embedded offline default)
#   snakemake --cores all --config params=params/paper.yaml       (paper profile)
# Every rule is a thin `ssame <stage>` call; all logic lives in src/ssame.
import yaml
from snakemake.utils import min_version, validate

from ssame.config import variant_uses_saliency

min_version("9.0")

PARAMS_FILE = config.get("params", "params/default.yaml")
with open(PARAMS_FILE) as handle:
    P = yaml.safe_load(handle)
validate(P, "workflow/schemas/params.schema.yaml")

R = P["results_dir"]
REPORTS = P["reports_dir"]
VARIANTS = P["train"]["variants"]
SEEDS = P["train"]["seeds"]

wildcard_constraints:
    variant="|".join(VARIANTS),
    seed=r"\d+",

def saliency_if_used(wildcards):
    """The saliency manifest for variants that read it; [] lets baseline jobs start while saliency runs."""
    return rules.saliency.output.manifest if variant_uses_saliency(P["variants"][wildcards.variant]) else []


include: "workflow/rules/data.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
