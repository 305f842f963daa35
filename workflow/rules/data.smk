# Downloads run on the submitting node: compute nodes of a cluster often have no internet.
localrules:
    download,
    weights,


rule download:
    output:
        results("data", "{dataset}.pt"),
    log:
        log_path("download", "{dataset}.log"),
    params:
        root=CONFIG["data"]["root"],
        source=(
            f"--source {CONFIG['data']['source']}"
            if CONFIG["data"]["source"]
            else ""
        ),
        no_download="" if CONFIG["data"]["download"] else "--no-download",
        subset=" ".join(
            f"--{k.replace('_', '-')} {CONFIG['data'][k]}"
            for k in ("max_train_per_class", "max_test_per_class")
            if CONFIG["data"].get(k)
        ),
    conda:
        CONDA_ENV
    shell:
        "pbu download --dataset {wildcards.dataset} --root {params.root} {params.source} "
        "{params.no_download} {params.subset} --out {output} 2> {log}"


rule weights:
    output:
        results("weights", "{arch}.done"),
    log:
        log_path("weights", "{arch}.log"),
    conda:
        CONDA_ENV
    shell:
        "pbu download-weights --arch {wildcards.arch} --out {output} 2> {log}"
