rule report:
    input:
        aggregates=expand(f"{R}/eval/{{variant}}/seed{{seed}}/aggregate.json", variant=VARIANTS, seed=SEEDS),
        predictions=expand(f"{R}/eval/{{variant}}/seed{{seed}}/predictions", variant=VARIANTS, seed=SEEDS),
        saliency=rules.saliency.output.manifest,
        quality=rules.saliency.output.quality,
    output:
        main=report(f"{REPORTS}/tables/main.csv", caption="../report/main_table.rst", category="Tables"),
        main_md=f"{REPORTS}/tables/main.md",
        ablation=report(f"{REPORTS}/tables/ablation.csv", caption="../report/ablation_table.rst",
                        category="Tables"),
        ablation_md=f"{REPORTS}/tables/ablation.md",
        per_dataset=f"{REPORTS}/tables/per_dataset.csv",
        per_dataset_md=f"{REPORTS}/tables/per_dataset.md",
        ci=report(f"{REPORTS}/tables/ci.csv", caption="../report/ci_table.rst", category="Tables"),
        ci_md=f"{REPORTS}/tables/ci.md",
        significance=report(f"{REPORTS}/tables/significance.csv", caption="../report/significance_table.rst",
                            category="Tables"),
        significance_md=f"{REPORTS}/tables/significance.md",
        published=report(f"{REPORTS}/tables/published.csv", caption="../report/published_table.rst",
                         category="Tables"),
        published_md=f"{REPORTS}/tables/published.md",
        interpretability=report(f"{REPORTS}/tables/interpretability.csv",
                                caption="../report/interpretability_table.rst", category="Tables"),
        interpretability_md=f"{REPORTS}/tables/interpretability.md",
        bars=report(f"{REPORTS}/figures/metatask_bars.png", caption="../report/metatask_bars.rst",
                    category="Figures"),
        overlays=report(f"{REPORTS}/figures/saliency_overlays.png", caption="../report/saliency_overlays.rst",
                        category="Figures"),
        saliency_quality=report(f"{REPORTS}/tables/saliency_quality.csv", caption="../report/saliency_quality.rst",
                                category="Saliency"),
        saliency_quality_md=f"{REPORTS}/tables/saliency_quality.md",
        saliency_methods=[report(f"{REPORTS}/figures/saliency_{m}.png", caption="../report/saliency_method.rst",
                                 category="Saliency") for m in [*P["saliency"]["quality"]["experts"], "fusion"]],
    threads: THREADS["report"]
    localrule: "report" in LOCAL
    resources:
        **RESOURCES["report"],
    benchmark:
        f"{BENCH}/report.tsv"
    log:
        f"{R}/logs/report.log",
    shell:
        "ssame launch report --gpus {resources.gpu} --params {PARAMS_FILE} --threads {threads} > {log} 2>&1"
