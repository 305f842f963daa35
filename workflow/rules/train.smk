# The original model, and the oracle: a fresh model trained from scratch with the same recipe on
# the retained classes only (the paper's "retrain" baseline). The oracle shares pretrain's
# resources: it is the same training on (K-1)/K of the data.


rule pretrain:
    input:
        data=path("data"),
        weights=weights_marker,
    output:
        model=path("pretrain_model"),
        info=path("pretrain_info"),
    log:
        log_path("pretrain"),
    benchmark:
        bench_path("pretrain")
    conda:
        CONDA_ENV
    threads: res("pretrain", "threads")
    resources:
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
        gpu=res("pretrain", "gpu"),
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
        stem=stem_arg,
        holdout=training_holdout_arg(),
        device=CONFIG["device"],
    shell:
        "pbu pretrain --data {input.data} --arch {wildcards.arch} --seed {wildcards.seed} "
        "--weights {params.weights} {params.stem} --recipe {params.recipe:q} {params.holdout} "
        "--device {params.device} --threads {threads} --quiet --out-model {output.model} "
        "--out-info {output.info} 2> {log}"


rule oracle:
    input:
        data=path("data"),
        weights=weights_marker,
    output:
        model=path("model", method=layout.ORACLE),
        info=path("info", method=layout.ORACLE),
    log:
        log_path("oracle"),
    benchmark:
        bench_path("oracle")
    conda:
        CONDA_ENV
    threads: res("pretrain", "threads")
    resources:
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
        gpu=res("pretrain", "gpu"),
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
        stem=stem_arg,
        holdout=training_holdout_arg(),
        device=CONFIG["device"],
    shell:
        "pbu oracle --data {input.data} --arch {wildcards.arch} --seed {wildcards.seed} "
        "--forget {wildcards.forget} --weights {params.weights} {params.stem} "
        "--recipe {params.recipe:q} {params.holdout} --device {params.device} --threads {threads} --quiet "
        "--out-model {output.model} --out-info {output.info} 2> {log}"
