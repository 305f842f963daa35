# The original model, and the retrain oracle: a fresh model trained from scratch with the same
# recipe on the retained classes only.


rule pretrain:
    input:
        data=results("data", "{dataset}.pt"),
        weights=weights_marker,
    output:
        model=seed_path("pretrain", "model.pt"),
        info=seed_path("pretrain", "info.json"),
    log:
        log_path(*SEED_PARTS, "pretrain.log"),
    benchmark:
        bench_path(*SEED_PARTS, "pretrain.tsv")
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
        stem=stem_arg,
        device=CONFIG["device"],
    threads: res("pretrain", "threads")
    resources:
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
        gpu=res("pretrain", "gpu"),
    conda:
        CONDA_ENV
    shell:
        "pbu pretrain --data {input.data} --arch {wildcards.arch} --seed {wildcards.seed} "
        "--weights {params.weights} {params.stem} --recipe {params.recipe:q} "
        "--device {params.device} --threads {threads} --quiet --out-model {output.model} "
        "--out-info {output.info} 2> {log}"


rule retrain:
    input:
        data=results("data", "{dataset}.pt"),
        weights=weights_marker,
    output:
        model=group_path("oracle", "model.pt"),
        info=group_path("oracle", "info.json"),
    log:
        log_path(*GROUP_PARTS, "oracle.log"),
    benchmark:
        bench_path(*GROUP_PARTS, "oracle.tsv")
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
        stem=stem_arg,
        device=CONFIG["device"],
    threads: res("pretrain", "threads")
    resources:
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
        gpu=res("pretrain", "gpu"),
    conda:
        CONDA_ENV
    shell:
        "pbu pretrain --data {input.data} --arch {wildcards.arch} --seed {wildcards.seed} "
        "--forget {wildcards.forget} --weights {params.weights} {params.stem} "
        "--recipe {params.recipe:q} --device {params.device} --threads {threads} --quiet "
        "--out-model {output.model} --out-info {output.info} 2> {log}"
