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
        options=download_args(),
    conda:
        CONDA_ENV
    shell:
        "pbu download --dataset {wildcards.dataset} {params.options} --out {output} 2> {log}"


rule weights:
    output:
        results("weights", "{arch}.done"),
    log:
        log_path("weights", "{arch}.log"),
    conda:
        CONDA_ENV
    shell:
        "pbu download-weights --arch {wildcards.arch} --out {output} 2> {log}"
