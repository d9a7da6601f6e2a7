# Shards (results/saliency/shards/) are a per-dataset cache the stage reuses when a dataset's files and the
# saliency params are unchanged, so they are not declared outputs (Snakemake would delete them before the job).
rule saliency:
    input:
        rules.data.output.manifest,
    output:
        manifest=f"{R}/saliency/manifest.json",
        quality=f"{R}/saliency/quality.csv",
    params:
        cfg=P["saliency"],
    log:
        f"{R}/logs/saliency.log",
    shell:
        "ssame saliency --params {PARAMS_FILE} > {log} 2>&1"
