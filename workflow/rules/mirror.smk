# Rehearsal only (params with a `mirror:` section): a local stand-in for the hub, written before the data stage.
rule mirror:
    output:
        done=f"{P['mirror']['dir']}/mirror.json",
    params:
        cfg=P["mirror"],
    log:
        f"{R}/logs/mirror.log",
    shell:
        "ssame mirror --params {PARAMS_FILE} > {log} 2>&1"
