# Every model of a (dataset, arch, seed, forget) group against the oracle, then all groups
# collected into CSV tables.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        group_path("metrics.json"),
    log:
        log_path(*GROUP_PARTS, "evaluate.log"),
    benchmark:
        bench_path(*GROUP_PARTS, "evaluate.tsv")
    params:
        models=model_args,
        settings=as_json(CONFIG["evaluation"]),
        device=CONFIG["device"],
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    conda:
        CONDA_ENV
    shell:
        "pbu evaluate --data {input.data} --forget {wildcards.forget} --seed {wildcards.seed} "
        "--original {input.original} --oracle {input.oracle} {params.models} "
        "--settings {params.settings:q} --device {params.device} --threads {threads} --quiet "
        "--out {output} 2> {log}"


rule aggregate:
    input:
        metrics_files(),
    output:
        runs=results("aggregate", "runs.csv"),
        history=results("aggregate", "history.csv"),
        timings=results("aggregate", "timings.csv"),
    log:
        log_path("aggregate.log"),
    benchmark:
        bench_path("aggregate.tsv")
    params:
        out_dir=parent_dir("runs"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "pbu aggregate --out-dir {params.out_dir} {input} 2> {log}"
