rule train:
    input:
        data=rules.data.output.manifest,
        saliency=saliency_if_used,
    output:
        model=directory(f"{R}/train/{{variant}}/seed{{seed}}/model"),
        metrics=f"{R}/train/{{variant}}/seed{{seed}}/metrics.json",
    params:
        model=P["model"],
        train={k: v for k, v in P["train"].items() if k not in ("variants", "seeds")},
        variant=lambda wc: P["variants"][wc.variant],
        accelerate=P["train"]["accelerate_config"],
    threads: TRAIN_PROCESSES  # one core per process of the launch (tiny CPU jobs run fastest single-threaded)
    log:
        f"{R}/logs/train/{{variant}}/seed{{seed}}.log",
    shell:
        "accelerate launch --config_file {params.accelerate} -m ssame train --params {PARAMS_FILE}"
        " --variant {wildcards.variant} --seed {wildcards.seed} --threads {threads} > {log} 2>&1"
