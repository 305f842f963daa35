# Tables, figures and report.md, drawn from the aggregated files after tracking completed.


rule report:
    input:
        runs=R + "/aggregate/runs.csv",
        history=R + "/aggregate/history.csv",
        timings=R + "/aggregate/timings.csv",
        reference="config/paper/reference.csv",
        tracked=R + "/mlflow/tracked.json",
    output:
        report=R + "/report.md",
        tables=directory(R + "/tables"),
        figures=directory(R + "/figures"),
    log:
        LOGS + "/report.log",
    benchmark:
        BENCH + "/report.tsv"
    params:
        aggregate=R + "/aggregate",
        out_dir=R,
        settings=as_json(report_settings()),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "pbu report --aggregate {params.aggregate} --reference {input.reference} "
        "--settings {params.settings:q} --out-dir {params.out_dir} 2> {log}"
