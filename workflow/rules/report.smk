# Every table as HTML (shown, captioned, in the HTML report), CSV, Markdown and booktabs LaTeX; every figure as PNG
# (shown, captioned) and PDF. Captions: workflow/report/<name>.rst.
def table(name, category="Tables"):
    return report(f"{REPORTS}/tables/{name}.html", caption=f"../report/{name}_table.rst", category=category)


def figure(name, category="Figures"):
    return report(f"{REPORTS}/figures/{name}.png", caption=f"../report/{name}.rst", category=category)


def siblings(folder, name, *suffixes):
    return multiext(f"{REPORTS}/{folder}/{name}", *suffixes)


rule report:
    input:
        aggregates=expand(f"{R}/eval/{{variant}}/seed{{seed}}/aggregate.json", variant=VARIANTS, seed=SEEDS),
        predictions=expand(f"{R}/eval/{{variant}}/seed{{seed}}/predictions", variant=VARIANTS, seed=SEEDS),
        histories=expand(f"{R}/train/{{variant}}/seed{{seed}}/history.csv", variant=VARIANTS, seed=SEEDS),
        attention=expand(f"{R}/eval/{{variant}}/seed{{seed}}/attention.json", variant=VARIANTS, seed=SEEDS),
        saliency=rules.saliency.output.manifest,
        quality=rules.saliency.output.quality,
    output:
        main=table("main"),
        main_other=siblings("tables", "main", ".csv", ".md", ".tex"),
        ablation=table("ablation"),
        ablation_other=siblings("tables", "ablation", ".csv", ".md", ".tex"),
        ablation_delta=table("ablation_delta"),
        ablation_delta_other=siblings("tables", "ablation_delta", ".csv", ".md", ".tex"),
        per_dataset=table("per_dataset"),
        per_dataset_other=siblings("tables", "per_dataset", ".csv", ".md", ".tex"),
        ci=table("ci"),
        ci_other=siblings("tables", "ci", ".csv", ".md", ".tex"),
        significance=table("significance"),
        significance_other=siblings("tables", "significance", ".csv", ".md", ".tex"),
        published=table("published"),
        published_other=siblings("tables", "published", ".csv", ".md", ".tex"),
        interpretability=table("interpretability"),
        interpretability_other=siblings("tables", "interpretability", ".csv", ".md", ".tex"),
        saliency_quality=table("saliency_quality", category="Saliency"),
        saliency_quality_other=siblings("tables", "saliency_quality", ".csv", ".md", ".tex"),
        bars=figure("metatask_bars"),
        bars_pdf=f"{REPORTS}/figures/metatask_bars.pdf",
        curves=figure("training_curves"),
        curves_pdf=f"{REPORTS}/figures/training_curves.pdf",
        heatmap=figure("per_dataset_heatmap"),
        heatmap_pdf=f"{REPORTS}/figures/per_dataset_heatmap.pdf",
        ablation_bars=figure("ablation_bars"),
        ablation_bars_pdf=f"{REPORTS}/figures/ablation_bars.pdf",
        attention=figure("attention_grid"),
        attention_pdf=f"{REPORTS}/figures/attention_grid.pdf",
        overlays=figure("saliency_overlays"),
        overlays_pdf=f"{REPORTS}/figures/saliency_overlays.pdf",
        saliency_methods=[report(f"{REPORTS}/figures/saliency_{m}.png", caption="../report/saliency_method.rst",
                                 category="Saliency") for m in [*P["saliency"]["quality"]["experts"], "fusion"]],
        saliency_methods_pdf=[f"{REPORTS}/figures/saliency_{m}.pdf"
                              for m in [*P["saliency"]["quality"]["experts"], "fusion"]],
    params:
        depends=stage_params(P, "report"),
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
        " --threads {threads} > {log} 2>&1"
