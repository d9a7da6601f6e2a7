# Included only when a variant trains on mined negatives (UniME-V2): one job per seed, after that seed's miner
# (params mine.miner, the baseline) has trained; its negatives feed every such variant of the seed.
rule mine:
    input:
        model=f"{R}/train/{P['mine']['miner']}/seed{{seed}}/model",
        data=rules.data.output.manifest,
        features=features_if_used,
    output:
        negatives=f"{R}/mine/seed{{seed}}/negatives.parquet",
        stats=f"{R}/mine/seed{{seed}}/stats.json",
    params:
        depends=stage_params(P, "mine"),
    threads: THREADS["mine"]
    localrule: "mine" in LOCAL
    resources:
        **RESOURCES["mine"],
    retries: RETRIES
    benchmark:
        f"{BENCH}/mine/seed{{seed}}.tsv"
    log:
        f"{R}/logs/mine/seed{{seed}}.log",
    shell:
        "ssame launch mine --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --seed {wildcards.seed}"
        " --threads {threads} > {log} 2>&1"
