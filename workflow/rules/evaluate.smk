# `ssame launch` shards the datasets' inputs over the job's GPUs (torchrun; one process without GPUs).
rule evaluate:
    input:
        model=rules.train.output.model,
        unreadable=rules.data.output.unreadable,
        eval_checks=rules.data.output.eval_checks,
        saliency=saliency_if_used,
        features=features_if_used,
    output:
        aggregate=f"{R}/eval/{{variant}}/seed{{seed}}/aggregate.json",
        attention=f"{R}/eval/{{variant}}/seed{{seed}}/attention.json",
        scores=directory(f"{R}/eval/{{variant}}/seed{{seed}}/scores"),
        predictions=directory(f"{R}/eval/{{variant}}/seed{{seed}}/predictions"),
        embeddings=directory(f"{R}/eval/{{variant}}/seed{{seed}}/embeddings"),
    params:
        depends=stage_params(P, "evaluate"),  # rerun when these params change (the DVC stage lists the same)
    threads: THREADS["evaluate"]
    localrule: "evaluate" in LOCAL
    resources:
        **RESOURCES["evaluate"],
    retries: RETRIES  # resumes from the datasets already embedded
    benchmark:
        f"{BENCH}/evaluate/{{variant}}/seed{{seed}}.tsv"
    log:
        f"{R}/logs/evaluate/{{variant}}/seed{{seed}}.log",
    shell:
        "ssame launch evaluate --params {PARAMS_FILE} --log-level {LOG_LEVEL} --variant {wildcards.variant} --seed {wildcards.seed}"
        " --threads {threads} --gpus {resources.gpu} > {log} 2>&1"
