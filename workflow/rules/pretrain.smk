# Included only when the params pretrain the tiny backbone (config.uses_pretrain): one job, before every training
# job, whose model folder each (variant, seed) fine-tunes from (docs/pretraining.md).
rule pretrain:
    input:
        rules.data.output.manifest,  # the tokenizer is trained on the benchmark text by the data stage
    output:
        model=directory(f"{R}/pretrain/model"),
        metrics=f"{R}/pretrain/metrics.json",
    params:
        depends=stage_params(P, "pretrain"),
    threads: THREADS["pretrain"]
    priority: 2  # before saliency (priority 1), which would otherwise hold one core while pretraining waits for two
    localrule: "pretrain" in LOCAL
    resources:
        **RESOURCES["pretrain"],
    benchmark:
        f"{BENCH}/pretrain.tsv"
    log:
        f"{R}/logs/pretrain.log",
    shell:
        "ssame launch pretrain --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --threads {threads} > {log} 2>&1"
