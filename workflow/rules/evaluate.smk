# Every model of a (dataset, arch, seed, forget) group against the oracle, then all groups
# collected into CSV tables.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        path("metrics"),
    log:
        log_path("evaluate"),
    benchmark:
        bench_path("evaluate")
    conda:
        CONDA_ENV
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    params:
        models=model_args,
        settings=as_json(CONFIG["evaluation"]),
        device=CONFIG["device"],
    shell:
        "pbu evaluate --data {input.data} --forget {wildcards.forget} --seed {wildcards.seed} "
        "--original {input.original} --oracle {input.oracle} {params.models} "
        "--settings {params.settings:q} --device {params.device} --threads {threads} --quiet "
        "--out {output} 2> {log}"


rule aggregate:
    input:
        metrics_files(),
    output:
        runs=path("runs_csv"),
        history=path("history_csv"),
        timings=path("timings_csv"),
    log:
        log_path("aggregate"),
    benchmark:
        bench_path("aggregate")
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=parent_dir("runs"),
    shell:
        "pbu aggregate --out-dir {params.out_dir} {input} 2> {log}"
