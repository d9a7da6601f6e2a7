# Every table as HTML (shown, captioned, in the HTML report), CSV, Markdown and booktabs LaTeX; every figure as PNG
# (shown, captioned) and PDF. Captions: workflow/report/<name>.rst.
def table(root, name, category="Tables"):
    return report(f"{root}/tables/{name}.html", caption=f"../report/{name}_table.rst", category=category)


def figure(root, name, category="Figures"):
    return report(f"{root}/figures/{name}.png", caption=f"../report/{name}.rst", category=category)


def tables(root, *names, category="Tables"):
    """Each table as HTML (in the HTML report, under `category`) and its CSV, Markdown and LaTeX siblings."""
    return {key: value for name in names for key, value in (
        (name, table(root, name, category)),
        (f"{name}_other", multiext(f"{root}/tables/{name}", ".csv", ".md", ".tex")))}


def figures(root, *names):
    """Each figure as PNG (in the HTML report) and PDF."""
    return {key: value for name in names for key, value in (
        (name, figure(root, name)), (f"{name}_pdf", f"{root}/figures/{name}.pdf"))}


# What ssame.report writes (TABLES, FIGURES; tests/test_dvc.py compares these outputs with its output_files); the
# report module itself is not imported here, it pulls in pandas and matplotlib on every parse of the Snakefile.
COMPARISON = {"tables": ["main", "ablation", "ablation_delta", "per_dataset", "ci", "significance", "published",
                         "interpretability"],
              "figures": ["metatask_bars", "training_curves", "per_dataset_heatmap", "ablation_bars",
                          "attention_grid"]}
SALIENCY_METHODS = [*P["saliency"]["quality"]["experts"], "fusion"]


def report_inputs(variants):
    return dict(
        aggregates=expand(f"{R}/eval/{{variant}}/seed{{seed}}/aggregate.json", variant=variants, seed=SEEDS),
        predictions=expand(f"{R}/eval/{{variant}}/seed{{seed}}/predictions", variant=variants, seed=SEEDS),
        histories=expand(f"{R}/train/{{variant}}/seed{{seed}}/history.csv", variant=variants, seed=SEEDS),
        attention=expand(f"{R}/eval/{{variant}}/seed{{seed}}/attention.json", variant=variants, seed=SEEDS),
    )


# Target all: train.variants, with the saliency stage's tables and figures.
rule report:
    input:
        **report_inputs(VARIANTS),
        saliency=rules.saliency.output.manifest,
        quality=rules.saliency.output.quality,
    output:
        **tables(REPORTS, *COMPARISON["tables"]),
        **figures(REPORTS, *COMPARISON["figures"]),
        **tables(REPORTS, "saliency_quality", category="Saliency"),
        **figures(REPORTS, "saliency_overlays"),
        saliency_methods=[report(f"{REPORTS}/figures/saliency_{m}.png", caption="../report/saliency_method.rst",
                                 category="Saliency") for m in SALIENCY_METHODS],
        saliency_methods_pdf=[f"{REPORTS}/figures/saliency_{m}.pdf" for m in SALIENCY_METHODS],
    params:
        depends=stage_params(P, "report"),
        scope="",
    threads: THREADS["report"]
    localrule: "report" in LOCAL
    resources:
        **RESOURCES["report"],
    benchmark:
        f"{BENCH}/report.tsv"
    log:
        f"{R}/logs/report.log",
    shell:
        "ssame launch report --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL}"
        " --threads {threads}{params.scope} > {log} 2>&1"


# Target seed_systems: train.variants and train.seed_systems, side by side (docs/seed_systems.md).
use rule report as report_seed_systems with:
    input:
        **report_inputs(VARIANTS + SEED_SYSTEMS),
    output:
        **tables(SEED_SYSTEMS_REPORTS, *COMPARISON["tables"]),
        **figures(SEED_SYSTEMS_REPORTS, *COMPARISON["figures"]),
    params:
        depends=stage_params(P, "report_seed_systems"),
        scope=" --seed-systems",
    benchmark:
        f"{BENCH}/report_seed_systems.tsv"
    log:
        f"{R}/logs/report_seed_systems.log",
