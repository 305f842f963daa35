# Every model of a (dataset, arch, seed, forget) group against the oracle, then all groups
# collected into CSV tables.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=path("metrics"),
        confidences=path("confidences"),
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
        settings=as_json(evaluation_settings()),
        device=CONFIG["device"],
    shell:
        "pbu evaluate --data {input.data} --forget {wildcards.forget} --seed {wildcards.seed} "
        "--original {input.original} --oracle {input.oracle} {params.models} "
        "--settings {params.settings:q} --device {params.device} --threads {threads} --quiet "
        "--out {output.metrics} --out-confidences {output.confidences} 2> {log}"


# The forget score's ceiling: per-example confidences of oracles of further seeds (config
# evaluation.forget_score.ceiling_seeds), which belong to no evaluation group.
rule ceiling:
    input:
        unpack(ceiling_oracles),
        data=path("data"),
    output:
        confidences=path("ceiling_confidences"),
        info=path("ceiling_info"),
    log:
        log_path("ceiling"),
    benchmark:
        bench_path("ceiling")
    conda:
        CONDA_ENV
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    params:
        oracles=ceiling_oracle_args,
        batch_size=CONFIG["evaluation"]["batch_size"],
        device=CONFIG["device"],
    shell:
        "pbu confidences --data {input.data} --forget {wildcards.forget} {params.oracles} "
        "--batch-size {params.batch_size} --device {params.device} --threads {threads} "
        "--quiet --out {output.confidences} --out-info {output.info} 2> {log}"


# The per-example forget score (docs/forget-score.md): every method against the oracles, image
# by image, from the confidences the evaluations saved (no model is run again).
rule forget_score:
    input:
        confidences=confidences_files(),
        ceiling=ceiling_files(),
    output:
        table=path("forget_score_csv"),
        images=path("forget_score_images_csv"),
        runs=path("forget_score_runs_csv"),
        info=path("forget_score_info"),
    log:
        log_path("forget_score"),
    benchmark:
        bench_path("forget_score")
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        out_dir=parent_dir("table"),
        ceiling=lambda wildcards, input: " ".join(f"--ceiling {p}" for p in input.ceiling),
        settings=as_json(forget_score_settings()),
    shell:
        "pbu forget-score --out-dir {params.out_dir} {params.ceiling} "
        "--settings {params.settings:q} {input.confidences} 2> {log}"


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
