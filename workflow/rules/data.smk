# Downloads run on the submitting node: compute nodes of a cluster often have no internet.
localrules:
    download,
    weights,


rule download:
    output:
        path("data"),
    log:
        log_path("download"),
    conda:
        CONDA_ENV
    params:
        options=download_args(),
    shell:
        "pbu download --dataset {wildcards.dataset} {params.options} --out {output} 2> {log}"


rule weights:
    output:
        path("weights"),
    log:
        log_path("weights"),
    conda:
        CONDA_ENV
    shell:
        "pbu download-weights --arch {wildcards.arch} --out {output} 2> {log}"
