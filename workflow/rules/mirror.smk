# Rehearsal only (params with a `mirror:` section): a local stand-in for the hub, written before the data stage.
rule mirror:
    output:
        done=f"{P['mirror']['dir']}/mirror.json",
    params:
        depends=stage_params(P, "mirror"),  # rerun when these params change (the DVC stage lists the same)
    threads: THREADS["mirror"]
    localrule: "mirror" in LOCAL
    resources:
        **RESOURCES["mirror"],
    benchmark:
        f"{BENCH}/mirror.tsv"
    log:
        f"{R}/logs/mirror.log",
    shell:
        "ssame launch mirror --gpus {resources.gpu} --params {PARAMS_FILE} --log-level {LOG_LEVEL} --threads {threads} > {log} 2>&1"
