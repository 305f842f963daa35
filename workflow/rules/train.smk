# The original model, and the retrain oracle: a fresh model trained from scratch with the same
# recipe on the retained classes only.


rule pretrain:
    input:
        data=R + "/data/{dataset}.pt",
        weights=weights_marker,
    output:
        model=SEED_DIR + "/pretrain/model.pt",
        info=SEED_DIR + "/pretrain/info.json",
    log:
        LOGS + "/{dataset}/{arch}/seed{seed}/pretrain.log",
    benchmark:
        BENCH + "/{dataset}/{arch}/seed{seed}/pretrain.tsv"
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
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
        "--weights {params.weights} --recipe {params.recipe:q} --device {params.device} "
        "--threads {threads} --quiet --out-model {output.model} --out-info {output.info} "
        "2> {log}"


rule retrain:
    input:
        data=R + "/data/{dataset}.pt",
        weights=weights_marker,
    output:
        model=GROUP_DIR + "/oracle/model.pt",
        info=GROUP_DIR + "/oracle/info.json",
    log:
        LOGS + "/{dataset}/{arch}/seed{seed}/forget{forget}/oracle.log",
    benchmark:
        BENCH + "/{dataset}/{arch}/seed{seed}/forget{forget}/oracle.tsv"
    params:
        recipe=as_json(CONFIG["pretrain"]),
        weights=CONFIG["model"]["weights"],
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
        "--forget {wildcards.forget} --weights {params.weights} --recipe {params.recipe:q} "
        "--device {params.device} --threads {threads} --quiet --out-model {output.model} "
        "--out-info {output.info} 2> {log}"
