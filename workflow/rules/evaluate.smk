rule evaluate:
    input:
        model=rules.train.output.model,
        unreadable=rules.data.output.unreadable,
        eval_checks=rules.data.output.eval_checks,
        saliency=saliency_if_used,
    output:
        aggregate=f"{R}/eval/{{variant}}/seed{{seed}}/aggregate.json",
        scores=directory(f"{R}/eval/{{variant}}/seed{{seed}}/scores"),
        predictions=directory(f"{R}/eval/{{variant}}/seed{{seed}}/predictions"),
        embeddings=directory(f"{R}/eval/{{variant}}/seed{{seed}}/embeddings"),
    params:
        cfg=P["evaluate"],
    threads: 1  # tiny CPU jobs run fastest single-threaded, side by side; raise for big models
    log:
        f"{R}/logs/evaluate/{{variant}}/seed{{seed}}.log",
    shell:
        "ssame evaluate --params {PARAMS_FILE} --variant {wildcards.variant} --seed {wildcards.seed}"
        " --threads {threads} > {log} 2>&1"
