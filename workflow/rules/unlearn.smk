# The forget-set Fisher (PBU's only extra input) and one job per unlearning method or variant
# (config variants: a method with hyperparameter overrides, in a folder of its own).


rule fisher:
    input:
        data=path("data"),
        model=path("pretrain_model"),
    output:
        fisher=path("fisher"),
        info=path("fisher_info"),
    log:
        log_path("fisher"),
    benchmark:
        bench_path("fisher")
    conda:
        CONDA_ENV
    threads: res("fisher", "threads")
    resources:
        mem_mb=res("fisher", "mem_mb"),
        runtime=res("fisher", "runtime"),
        gpu=res("fisher", "gpu"),
    params:
        kind=CONFIG["fisher"]["kind"],
        bn_mode=CONFIG["fisher"]["bn_mode"],
        mc_samples=CONFIG["fisher"]["mc_samples"],
        chunk_size=CONFIG["fisher"]["chunk_size"],
        batch_size=CONFIG["fisher"]["batch_size"],
        holdout=holdout_arg(),
        device=CONFIG["device"],
    shell:
        "pbu fisher --data {input.data} --model {input.model} --forget {wildcards.forget} "
        "--kind {params.kind} --bn-mode {params.bn_mode} --mc-samples {params.mc_samples} "
        "--chunk-size {params.chunk_size} --batch-size {params.batch_size} {params.holdout} "
        "--seed {wildcards.seed} --device {params.device} --threads {threads} --quiet "
        "--out {output.fisher} --out-info {output.info} 2> {log}"


# config unlearn_batch: one job per group runs every method (the same files as one job per
# method; pbu/jobs/unlearn_batch.py); for runs of thousands of short jobs.
if CONFIG["unlearn_batch"]:

    rule unlearn_batch:
        input:
            unpack(unlearn_batch_inputs),
        output:
            model=unlearn_batch_outputs("model"),
            history=unlearn_batch_outputs("history"),
            info=unlearn_batch_outputs("info"),
        log:
            log_path("unlearn_batch"),
        benchmark:
            bench_path("unlearn_batch")
        conda:
            CONDA_ENV
        threads: res("unlearn", "threads")
        resources:
            mem_mb=res("unlearn", "mem_mb"),
            runtime=lambda wildcards: res("unlearn", "runtime") * len(CONFIG["methods"]),
            gpu=res("unlearn", "gpu"),
        params:
            entries=unlearn_batch_entries,
            device=CONFIG["device"],
        shell:
            "pbu unlearn-batch --data {input.data} --model {input.model} "
            "--forget {wildcards.forget} --seed {wildcards.seed} --entries {params.entries} "
            "--device {params.device} --threads {threads} --quiet 2> {log}"

    ruleorder: unlearn_batch > unlearn


rule unlearn:
    input:
        unpack(unlearn_inputs),
    output:
        model=path("model"),
        history=path("history"),
        info=path("info"),
    log:
        log_path("unlearn"),
    benchmark:
        bench_path("unlearn")
    conda:
        CONDA_ENV
    threads: res("unlearn", "threads")
    resources:
        mem_mb=res("unlearn", "mem_mb"),
        runtime=res("unlearn", "runtime"),
        gpu=res("unlearn", "gpu"),
    params:
        method=lambda wildcards: base_of(wildcards.method),
        hparams=lambda wildcards: as_json(hparams_of(wildcards.method)),
        variant=variant_arg,
        fisher=fisher_arg,
        tuned=tuned_arg,
        holdout=holdout_arg(),
        retain_subset=CONFIG["retain_subset"],
        monitor_every=lambda wildcards: (
            CONFIG["monitor"]["every"] if wildcards.method in CONFIG["monitor"]["methods"] else 0
        ),
        monitor_retain=CONFIG["monitor"]["retain_samples"],
        device=CONFIG["device"],
    shell:
        "pbu unlearn --data {input.data} --model {input.model} --forget {wildcards.forget} "
        "--method {params.method} {params.variant} --hparams {params.hparams:q} {params.fisher} "
        "{params.tuned} {params.holdout} "
        "--retain-subset {params.retain_subset} --seed {wildcards.seed} "
        "--monitor-every {params.monitor_every} --monitor-retain {params.monitor_retain} "
        "--device {params.device} --threads {threads} "
        "--quiet --out-model {output.model} --out-history {output.history} "
        "--out-info {output.info} 2> {log}"
