# Tuning (pbu/tune.py, docs/tuning.md). The development-class run (tuning.develop,
# config/tune.yaml): one tune_dev job per method or variant over the tuning seeds, then freeze
# writes the setting's frozen choice (tuning.frozen) and track_tuning mirrors every trial into
# MLflow. Per-group tuning (tuning.enabled): one tune job per tuned method and group, under the
# blind or validation protocol; the group's unlearn job reads the choice (unlearn_inputs).
localrules:
    freeze,
    track_tuning,


rule tune:
    input:
        data=path("data"),
        model=path("pretrain_model"),
    output:
        path("tune"),
    log:
        log_path("tune"),
    benchmark:
        bench_path("tune")
    conda:
        CONDA_ENV
    threads: res("tune", "threads")
    resources:
        mem_mb=res("tune", "mem_mb"),
        runtime=res("tune", "runtime"),
        gpu=res("tune", "gpu"),
    params:
        method=lambda wildcards: base_of(wildcards.method),
        hparams=lambda wildcards: as_json(hparams_of(wildcards.method)),
        space=space_arg,
        protocol=CONFIG["tuning"]["protocol"],
        budget=CONFIG["tuning"]["budget"],
        val_fraction=CONFIG["tuning"]["val_fraction"],
        threshold=CONFIG["tuning"]["threshold"],
        fisher=fisher_settings_arg,
        retain_subset=CONFIG["retain_subset"],
        device=CONFIG["device"],
    shell:
        "pbu tune --data {input.data} --model {input.model} --forget {wildcards.forget} "
        "--method {params.method} --hparams {params.hparams:q} --space {params.space:q} "
        "--protocol {params.protocol} --budget {params.budget} "
        "--val-fraction {params.val_fraction} "
        "--threshold {params.threshold} {params.fisher} "
        "--retain-subset {params.retain_subset} --seed {wildcards.seed} "
        "--device {params.device} --threads {threads} --quiet --out {output} 2> {log}"


rule tune_dev:
    input:
        unpack(dev_tune_inputs),
    output:
        record=path("dev_tune"),
        study=path("dev_study"),
    log:
        log_path("tune_dev"),
    benchmark:
        bench_path("tune_dev")
    conda:
        CONDA_ENV
    threads: res("tune", "threads")
    resources:
        mem_mb=res("tune", "mem_mb"),
        runtime=res("tune", "runtime"),
        gpu=res("tune", "gpu"),
    params:
        models=seed_paths_arg("--model", "models"),
        oracles=seed_paths_arg("--oracle", "oracles"),
        forget=CONFIG["forget"][0],
        method=lambda wildcards: base_of(wildcards.method),
        variant=variant_arg,
        hparams=lambda wildcards: as_json(hparams_of(wildcards.method)),
        space=space_arg,
        budget=CONFIG["tuning"]["budget"],
        sampler_seed=CONFIG["tuning"]["sampler_seed"],
        val_fraction=CONFIG["tuning"]["val_fraction"],
        fisher=fisher_settings_arg,
        retain_subset=CONFIG["retain_subset"],
        device=CONFIG["device"],
    shell:
        "pbu tune-dev --data {input.data} {params.models} {params.oracles} "
        "--forget {params.forget} --method {params.method} {params.variant} "
        "--hparams {params.hparams:q} --space {params.space:q} --budget {params.budget} "
        "--sampler-seed {params.sampler_seed} --val-fraction {params.val_fraction} "
        "{params.fisher} --retain-subset {params.retain_subset} --storage {output.study} "
        "--device {params.device} --threads {threads} --quiet --out {output.record} 2> {log}"


rule freeze:
    input:
        unpack(freeze_inputs),
    output:
        frozen_pattern(),
    log:
        log_path("freeze"),
    wildcard_constraints:
        dataset=CONFIG["dataset"],
        arch="|".join(CONFIG["archs"]),
    conda:
        CONDA_ENV
    params:
        records=lambda wildcards, input: " ".join(f"--record {r}" for r in input.records),
        training=lambda wildcards, input: " ".join(f"--training {t}" for t in input.training),
    shell:
        "pbu freeze {params.records} {params.training} --out {output} 2> {log}"


rule track_tuning:
    input:
        dev_records(),
    output:
        path("tracked_tuning"),
    log:
        log_path("track_tuning"),
    conda:
        CONDA_ENV
    params:
        uri=CONFIG["mlflow"]["tracking_uri"],
        experiment=CONFIG["mlflow"]["experiment"],
        records=lambda wildcards, input: " ".join(f"--tune-record {r}" for r in input),
    shell:
        "pbu track --tracking-uri {params.uri} --experiment {params.experiment} "
        "{params.records} --out {output} 2> {log}"
