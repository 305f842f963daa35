# Tuning (pbu/tune.py): one job per tuned method, under the blind protocol (a validation split
# carved from the data that method may see) or the validation protocol (the experimenter's
# held-out split of the training set); the unlearn job of a tuned method reads the choice
# (unlearn_inputs).


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
        space=lambda wildcards: as_json(CONFIG["tuning"]["space"][wildcards.method]),
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
