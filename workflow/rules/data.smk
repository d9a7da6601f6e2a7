rule data:
    input:
        mirror_if_rehearsal,
    output:
        manifest=f"{R}/data/manifest.csv",
        train=directory(f"{R}/data/train"),
        eval=directory(f"{R}/data/eval"),
        images=directory(f"{R}/data/images"),
        unreadable=f"{R}/data/unreadable.json",  # images that failed to decode (data.bad_input)
        eval_checks=f"{R}/data/eval_checks.json",  # duplicated ground truths, unexpected candidate counts
    params:
        depends=stage_params(P, "data"),  # rerun when these params change (the DVC stage lists the same)
    threads: THREADS["data"]
    localrule: "data" in LOCAL
    resources:
        **RESOURCES["data"],
    benchmark:
        f"{BENCH}/data.tsv"
    log:
        f"{R}/logs/data.log",
    shell:
        "ssame launch data --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --threads {threads} > {log} 2>&1"
