# Tables, figures and report.md, drawn from the aggregated files (beside `track`: the report
# never waits for MLflow).


rule report:
    input:
        runs=path("runs_csv"),
        history=path("history_csv"),
        timings=path("timings_csv"),
        forget_score=forget_score_tables(),
        reference="config/paper/reference.csv",
    output:
        report=path("report"),
        tables=report(
            directory(path("tables")),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory(path("figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        aggregate=parent_dir("runs"),
        out_dir=parent_dir("report"),
        settings=as_json(
            dict(
                report_settings(),
                evaluation=CONFIG["evaluation"],
            )
        ),
    shell:
        "pbu report --aggregate {params.aggregate} --reference {input.reference} "
        "--settings {params.settings:q} --out-dir {params.out_dir} 2> {log}"
