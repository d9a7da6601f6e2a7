rule data:
    output:
        manifest=f"{R}/data/manifest.csv",
        train=directory(f"{R}/data/train"),
        eval=directory(f"{R}/data/eval"),
        images=directory(f"{R}/data/images"),
    params:
        cfg=P["data"],
    log:
        f"{R}/logs/data.log",
    shell:
        "ssame data --params {PARAMS_FILE} > {log} 2>&1"
