# Downloads run on the submitting node: compute nodes of a cluster often have no internet.
localrules:
    download,
    weights,


def download_args():
    """`pbu download` options from config data: (stand-in | source + download), caps (the
    forget classes' floor makes the prepared file depend on config forget, so only set it with
    caps)."""
    data = CONFIG["data"]
    if data.get("stand_in"):  # generated images: no source, no download
        args = ["--stand-in"]
        if data.get("max_image_size"):
            args.append(f"--max-image-size {data['max_image_size']}")
    else:
        args = [f"--root {data['root']}"]
        if data["source"]:
            args.append(f"--source {data['source']}")
        if not data["download"]:
            args.append("--no-download")
    args += [
        f"--{k.replace('_', '-')} {data[k]}"
        for k in ("max_train_per_class", "max_test_per_class")
        if data.get(k)
    ]
    if data.get("min_forget_per_class"):  # the forget classes keep more under the caps
        classes = ",".join(str(c) for c in CONFIG["forget"])
        args.append(
            f"--keep-classes {classes} --keep-per-class {data['min_forget_per_class']}"
        )
    return " ".join(args)


rule download:
    output:
        results("data", "{dataset}.pt"),
    log:
        log_path("download", "{dataset}.log"),
    params:
        options=download_args(),
    conda:
        CONDA_ENV
    shell:
        "pbu download --dataset {wildcards.dataset} {params.options} --out {output} 2> {log}"


rule weights:
    output:
        results("weights", "{arch}.done"),
    log:
        log_path("weights", "{arch}.log"),
    conda:
        CONDA_ENV
    shell:
        "pbu download-weights --arch {wildcards.arch} --out {output} 2> {log}"
