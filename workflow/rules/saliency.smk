rule saliency:
    input:
        rules.data.output.manifest,
    output:
        manifest=f"{R}/saliency/manifest.json",
        shards=directory(f"{R}/saliency/shards"),
    params:
        cfg=P["saliency"],
    log:
        f"{R}/logs/saliency.log",
    shell:
        "ssame saliency --params {PARAMS_FILE} > {log} 2>&1"
