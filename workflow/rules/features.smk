# Included only when params model.image_features is cached (config.uses_image_features): one job, after the
# backbone every training job starts from, whose output train, mine and evaluate jobs read instead of running the
# frozen vision tower on the same images again (docs/training.md).
rule features:
    input:
        data=rules.data.output.manifest,
        pretrained=pretrained_if_used,
    output:  # one folder, written whole (ssame.features.store)
        tensors=f"{R}/features/features.safetensors",
        record=f"{R}/features/features.json",
    params:
        depends=stage_params(P, "features"),
    threads: THREADS["features"]
    priority: 2  # on the path to every training job, as pretraining is
    localrule: "features" in LOCAL
    resources:
        **RESOURCES["features"],
    benchmark:
        f"{BENCH}/features.tsv"
    log:
        f"{R}/logs/features.log",
    shell:
        "ssame launch features --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --threads {threads} > {log} 2>&1"
