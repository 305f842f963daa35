# MLflow mirrors the result files. One tracking job at a time: parallel compute jobs never touch
# the store, so they cannot lock or corrupt it, and a failed tracking step loses no result.
localrules:
    track,
    track_report,


rule track:
    input:
        metrics=metrics_files(),
        runs=R + "/aggregate/runs.csv",
    output:
        R + "/mlflow/tracked.json",
    log:
        LOGS + "/track.log",
    params:
        results=R,
        uri=CONFIG["mlflow"]["tracking_uri"],
        experiment=CONFIG["mlflow"]["experiment"],
    conda:
        CONDA_ENV
    shell:
        "pbu track --results {params.results} --tracking-uri {params.uri} "
        "--experiment {params.experiment} --out {output} {input.metrics} 2> {log}"


rule track_report:
    input:
        metrics=metrics_files(),
        tracked=R + "/mlflow/tracked.json",
        report=R + "/report.md",
        tables=R + "/tables",
        figures=R + "/figures",
    output:
        R + "/mlflow/tracked_report.json",
    log:
        LOGS + "/track_report.log",
    params:
        results=R,
        uri=CONFIG["mlflow"]["tracking_uri"],
        experiment=CONFIG["mlflow"]["experiment"],
    conda:
        CONDA_ENV
    shell:
        "pbu track --results {params.results} --tracking-uri {params.uri} "
        "--experiment {params.experiment} --report {input.report} "
        "--report {input.tables} --report {input.figures} --out {output} "
        "{input.metrics} 2> {log}"
