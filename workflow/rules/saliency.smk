# Shards (results/saliency/shards/) are a per-dataset cache the stage reuses when a dataset's files and the
# saliency params are unchanged, so they are not declared outputs (Snakemake would delete them before the job).
rule saliency:
    input:
        rules.data.output.manifest,
    output:
        manifest=f"{R}/saliency/manifest.json",
        quality=f"{R}/saliency/quality.csv",
    params:
        depends=stage_params(P, "saliency"),  # rerun when these params change (the DVC stage lists the same)
    threads: THREADS["saliency"]
    priority: 1  # right after pretraining (priority 2), before the baselines' jobs: every SSA-ME job waits for it
    localrule: "saliency" in LOCAL
    resources:
        **RESOURCES["saliency"],
    benchmark:
        f"{BENCH}/saliency.tsv"
    log:
        f"{R}/logs/saliency.log",
    shell:
        "ssame launch saliency --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --threads {threads} > {log} 2>&1"
