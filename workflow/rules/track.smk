# MLflow mirrors the result files. One tracking job at a time: parallel compute jobs never touch
# the store, so they cannot lock or corrupt it, and a failed tracking step loses no result.
localrules:
    track,
    track_report,


rule track:
    input:
        metrics=metrics_files(),
        runs=path("runs_csv"),
        forget_score=forget_score_tables(),
    output:
        path("tracked"),
    log:
        log_path("track"),
    conda:
        CONDA_ENV
    params:
        uri=CONFIG["mlflow"]["tracking_uri"],
        experiment=CONFIG["mlflow"]["experiment"],
        forget_score=forget_score_arg,
    shell:
        "pbu track --tracking-uri {params.uri} {params.forget_score} "
        "--experiment {params.experiment} --out {output} {input.metrics} 2> {log}"


rule track_report:
    input:
        metrics=metrics_files(),
        tracked=path("tracked"),
        report=path("report"),
        tables=path("tables"),
        figures=path("figures"),
    output:
        path("tracked_report"),
    log:
        log_path("track_report"),
    conda:
        CONDA_ENV
    params:
        uri=CONFIG["mlflow"]["tracking_uri"],
        experiment=CONFIG["mlflow"]["experiment"],
        forget_score=forget_score_arg,
    shell:
        "pbu track --tracking-uri {params.uri} {params.forget_score} "
        "--experiment {params.experiment} --report {input.report} "
        "--report {input.tables} --report {input.figures} --out {output} "
        "{input.metrics} 2> {log}"
