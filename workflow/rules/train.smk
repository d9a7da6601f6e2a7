# `ssame launch` gives the job its devices and rendezvous port, then runs `accelerate launch ... -m ssame train`
# (once per node; on several SLURM nodes through srun). A failed job is retried: training resumes from its checkpoint.
rule train:
    input:
        data=rules.data.output.manifest,
        pretrained=pretrained_if_used,
        saliency=saliency_if_used,
        negatives=mined_if_used,
        features=features_if_used,
    output:
        model=directory(f"{R}/train/{{variant}}/seed{{seed}}/model"),
        metrics=f"{R}/train/{{variant}}/seed{{seed}}/metrics.json",
        history=f"{R}/train/{{variant}}/seed{{seed}}/history.csv",
    params:  # its own variant and the train keys that shape a run: a new seed or variant leaves the others be
        depends=lambda wc: stage_params(P, "train", wc.variant),
    threads: THREADS["train"]
    localrule: "train" in LOCAL
    resources:
        **RESOURCES["train"],
    retries: RETRIES
    benchmark:
        f"{BENCH}/train/{{variant}}/seed{{seed}}.tsv"
    log:
        f"{R}/logs/train/{{variant}}/seed{{seed}}.log",
    shell:
        "ssame launch train --params {PARAMS_FILE} --log-level {LOG_LEVEL} --variant {wildcards.variant} --seed {wildcards.seed}"
        " --threads {threads} --gpus {resources.gpu} --nodes {resources.nodes} > {log} 2>&1"
