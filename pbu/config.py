"""Validate and resolve a pipeline config before any job starts (torch-free, cheap to import).

``check_config(config, schema_path)`` applies the JSON schema (draft 2020-12, strict) and the
checks a schema cannot express (a forget class must exist in the chosen dataset, every selected
method needs its hyperparameters, a variant's overrides must be hyperparameters of its method,
the results folder must be writable). Each problem is reported in one line that names the key
and what is allowed.

Variants (``variants:``) are a registered method plus hyperparameter overrides, run under a name
of their own: :func:`base_method`, :func:`overrides` and :func:`method_hparams` resolve a name of
``methods`` (a method or a variant) for the rules, so a variant's job gets its base method's
hyperparameters with its overrides merged in.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pbu.layout import RESERVED_NAMES
from pbu.registry import get_spec, stem_problem


class ConfigError(ValueError):
    """A config key has a bad value; the message names the key."""


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def validate_schema(config: dict[str, Any], schema_path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming the first (most relevant) schema violation."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    where = _path(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        raise ConfigError(f"config key {where}: {err.message}; allowed keys: {', '.join(allowed)}")
    if err.validator == "required":
        raise ConfigError(f"config key {where}: {err.message}")
    raise ConfigError(f"config key {where}: {err.message}")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse an unwritable results location up front."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pbu-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"config key results: cannot write to {folder} ({err.strerror}); "
            f"choose a writable folder"
        ) from None


def forget_classes(config: dict[str, Any]) -> list[int]:
    """The forget classes, with ``all`` expanded for the config's dataset."""
    k = get_spec(config["dataset"]).num_classes
    return list(range(k)) if config["forget"] == "all" else list(config["forget"])


def variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's variants (name -> {method, hparams}); none when the section is absent."""
    return config.get("variants") or {}


def base_method(config: dict[str, Any], name: str) -> str:
    """The registered method behind ``name``: a variant's ``method``, else ``name`` itself."""
    variant = variants(config).get(name)
    return variant["method"] if variant else name


def overrides(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A variant's hyperparameter overrides; ``{}`` for a plain method."""
    variant = variants(config).get(name)
    return dict(variant.get("hparams") or {}) if variant else {}


def method_hparams(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The hyperparameters ``name`` runs with: ``hparams.<method>`` of its base method, with a
    variant's overrides merged over them."""
    return {**config["hparams"][base_method(config, name)], **overrides(config, name)}


def _hparams_schema(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per registered method, its declared hyperparameters' schemas (the schema's ``hparams``
    section mirrors ``@register(..., hparams=...)``; a test keeps the two equal)."""
    per_method = schema["properties"]["hparams"]["properties"]
    return {m: node["properties"] for m, node in per_method.items()}


def _check_value(where: str, node: dict[str, Any], value: Any) -> None:
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(node).iter_errors(value))
    if err is not None:
        raise ConfigError(f"{where}: {err.message}")


def check_variants(config: dict[str, Any], declared: dict[str, dict[str, Any]]) -> None:
    """Every variant has a name of its own, a base method with hyperparameters, and overrides
    that are declared hyperparameters of that method with values its schema accepts."""
    for name, variant in variants(config).items():
        where = f"config key variants.{name}"
        if name in declared:
            raise ConfigError(
                f"{where}: {name!r} is a method's name; a variant needs its own "
                f"(e.g. {name}_<what changes>)"
            )
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{where}: {name!r} is reserved (a results file or another model's row); "
                f"reserved: {', '.join(RESERVED_NAMES)}"
            )
        base = variant["method"]
        if base not in config["hparams"]:
            raise ConfigError(
                f"config key hparams.{base}: missing; variant {name!r} is based on {base!r}"
            )
        names = declared[base]
        for key, value in variant["hparams"].items():
            if key not in names:
                raise ConfigError(
                    f"{where}.hparams.{key}: not a hyperparameter of {base}; "
                    f"allowed: {', '.join(names)}"
                )
            _check_value(f"{where}.hparams.{key}", names[key], value)


def _check_names(config: dict[str, Any], key: str, names: list[str], declared: Any) -> None:
    """Each entry of ``names`` (config key ``key``) is a registered method or a variant."""
    for i, name in enumerate(names):
        if name not in declared and name not in variants(config):
            raise ConfigError(
                f"config key {key}.{i}: {name!r} is neither a method ({', '.join(declared)}) "
                f"nor a variant ({', '.join(variants(config)) or 'none under variants'})"
            )


def _check_tuning_names(config: dict[str, Any], declared: Any) -> None:
    """tuning.methods and tuning.space name registered methods or variants only."""
    _check_names(config, "tuning.methods", config["tuning"]["methods"], declared)
    for m in config["tuning"]["space"]:
        if m not in declared and m not in variants(config):
            raise ConfigError(
                f"config key tuning.space.{m}: not a method ({', '.join(declared)}) or a variant "
                f"({', '.join(variants(config)) or 'none under variants'})"
            )


def tuning_space(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The search space of a methods entry: its own ``tuning.space.<name>``, else (a variant)
    its base method's without the names its overrides fix; None when there is none."""
    from pbu.tune import variant_space

    spaces = config["tuning"]["space"]
    if name in spaces:
        return dict(spaces[name])
    base = base_method(config, name)
    if base != name and base in spaces:
        return variant_space(spaces[base], overrides(config, name))
    return None


def tuned_names(config: dict[str, Any]) -> list[str]:
    """The methods entries whose search spaces a run needs: ``tuning.methods`` (per-group
    tuning; checked whether it is on or not, so turning it on cannot fail later) and, in the
    development-class run, every entry of ``methods``."""
    tuning = config["tuning"]
    names = list(tuning["methods"])
    if tuning["develop"]:
        names += [m for m in config["methods"] if m not in names]
    return names


def _check_space_values(
    where: str, base: str, names: dict[str, Any], space: dict[str, Any]
) -> None:
    import jsonschema

    for k, values in space.items():
        if k not in names:
            raise ConfigError(
                f"{where}.{k}: not a hyperparameter of {base}; allowed: {', '.join(names)}"
            )
        node = names[k]
        if isinstance(values, dict):
            if values["low"] >= values["high"]:
                raise ConfigError(f"{where}.{k}: low must be below high")
            if values.get("log") and values["low"] <= 0:
                raise ConfigError(f"{where}.{k}: a log range needs low > 0")
            if node.get("type") == "integer" and not values.get("int"):
                raise ConfigError(f"{where}.{k}: an integer hyperparameter needs int: true")
            check = [values["low"], values["high"]]
        else:
            check = list(values)
        for v in check:
            err = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(node).iter_errors(v)
            )
            if err is not None:
                raise ConfigError(f"{where}.{k}: {err.message}")


def check_tuning(config: dict[str, Any], schema_path: str | os.PathLike) -> None:
    """Every tuned method or variant has hyperparameters and a search space of its base method's
    declared names (a variant's never naming its overrides), with values its hparams schema
    accepts and, for a space of choices only, at least ``tuning.budget`` points (equal
    budgets). The development-class run tunes one forget class and writes ``tuning.frozen``."""
    from pbu.tune import grid_size

    tuning = config["tuning"]
    hp_schema = yaml.safe_load(Path(schema_path).read_text())["properties"]["hparams"]
    _check_tuning_names(config, hp_schema["properties"])
    for m, space in tuning["space"].items():
        fixed = sorted(set(space) & set(overrides(config, m)))
        if fixed:
            raise ConfigError(
                f"config key tuning.space.{m}: {', '.join(fixed)} define(s) the variant "
                f"(variants.{m}.hparams) and cannot be tuned"
            )
    if tuning["develop"]:
        if config["forget"] == "all" or len(config["forget"]) != 1:
            raise ConfigError(
                "config key forget: the development-class run (tuning.develop) tunes on exactly "
                "one class, which no verdict run reports (e.g. forget: [0])"
            )
        if not tuning["frozen"]:
            raise ConfigError(
                "config key tuning.frozen: the development-class run writes it; give a path "
                "pattern with {dataset} and {arch}"
            )
    for m in tuned_names(config):
        where = f"config key tuning.space.{m}"
        base = base_method(config, m)
        if base not in config["hparams"]:
            raise ConfigError(f"config key hparams.{base}: missing; tuning lists {m!r}")
        space = tuning_space(config, m)
        if space is None:
            raise ConfigError(
                f"{where}: missing; tuning lists {m!r}, so it needs a search space (its own, "
                f"or a variant's base method's)"
            )
        _check_space_values(where, base, hp_schema["properties"][base]["properties"], space)
        n = grid_size(space)
        if n is not None and n < tuning["budget"]:
            raise ConfigError(
                f"{where}: {n} point(s), fewer than tuning.budget "
                f"{tuning['budget']}; every method gets the same number of trials"
            )


def forget_score_config(config: dict[str, Any]) -> dict[str, Any]:
    """``evaluation.forget_score`` (off, with no ceiling seeds, when the section is absent)."""
    fs = dict((config.get("evaluation") or {}).get("forget_score") or {})
    fs.setdefault("enabled", False)
    fs.setdefault("ceiling_seeds", [])
    return fs


def check_forget_score(config: dict[str, Any]) -> None:
    """The forget score compares N models a side: at least 2 seeds, and the ceiling's further
    oracles are as many as the seeds and none of them."""
    fs = forget_score_config(config)
    if not fs["enabled"]:
        return
    where = "config key evaluation.forget_score"
    if len(config["seeds"]) < 2:
        raise ConfigError(
            f"{where}.enabled: the forget score compares N models a side, so it needs at least "
            f"2 seeds; seeds has {len(config['seeds'])}"
        )
    ceiling = fs["ceiling_seeds"]
    if ceiling and len(ceiling) != len(config["seeds"]):
        raise ConfigError(
            f"{where}.ceiling_seeds: {len(ceiling)} seeds, but the ceiling compares as many "
            f"further oracles as seeds ({len(config['seeds'])})"
        )
    shared = sorted(set(ceiling) & set(config["seeds"]))
    if shared:
        raise ConfigError(
            f"{where}.ceiling_seeds: {shared} are also in seeds; the ceiling's oracles must come "
            f"from other seeds"
        )


# ------------------------------------------------------------------------------------------
# The frozen development-class choice (pbu/tuned.py)
# ------------------------------------------------------------------------------------------


def frozen_file(config: dict[str, Any], arch: str) -> Path | None:
    """The frozen choice's file of one setting (``tuning.frozen`` filled in); None when the
    run loads none (no pattern, or the development-class run, which writes it)."""
    pattern = config["tuning"]["frozen"]
    if not pattern or config["tuning"]["develop"]:
        return None
    return Path(pattern.format(dataset=config["dataset"], arch=arch))


def load_tuned(config: dict[str, Any], declared: dict[str, dict[str, Any]] | None = None) -> dict:
    """Per arch of the run, the frozen choice it loads (``{arch: (path, content)}``; archs
    without a file are absent). Checks that each file is of this setting, that its
    development class is not one the run reports, and that its names are hyperparameters."""
    from pbu.tuned import FrozenError, load_frozen

    out = {}
    classes = forget_classes(config)
    for arch in config["archs"]:
        path = frozen_file(config, arch)
        if path is None or not path.is_file():
            continue
        where = f"config key tuning.frozen ({path})"
        try:
            frozen = load_frozen(path)
        except FrozenError as err:
            raise ConfigError(f"{where}: {err}") from None
        if (frozen["dataset"], frozen["arch"]) != (config["dataset"], arch):
            raise ConfigError(
                f"{where}: tuned for {frozen['dataset']} / {frozen['arch']}, not "
                f"{config['dataset']} / {arch}"
            )
        dev = frozen["provenance"].get("forget_class")
        if dev in classes:
            raise ConfigError(
                f"{where}: tuned on class {dev}, which this run reports (config key forget); "
                f"the development class is never reported: drop it from forget, or set "
                f"tuning.frozen: null"
            )
        for name, entry in frozen["methods"].items():
            base = entry.get("base_method", name)
            names = (declared or {}).get(base)
            unknown = sorted(set(entry["hparams"]) - set(names or entry["hparams"]))
            if unknown:
                raise ConfigError(
                    f"{where}: methods.{name}: {', '.join(unknown)} not hyperparameter(s) of {base}"
                )
        out[arch] = (path, frozen)
    return out


def tuned_choice(
    config: dict[str, Any], tuned: dict, arch: str, name: str
) -> dict[str, Any] | None:
    """What an unlearn job of ``name`` on ``arch`` gets from the frozen choice
    (``{"hparams": tuned names, "source": where they came from}``), or None (its
    hyperparameters come from the config: protocol ``config``)."""
    from pbu.tuned import choice, source

    if arch not in tuned:
        return None
    path, frozen = tuned[arch]
    found = choice(frozen, name, base_method(config, name))
    if found is None:
        return None
    hparams, chosen_by = found
    # a variant keeps its defining overrides, also over its base method's choice
    hparams = {k: v for k, v in hparams.items() if k not in overrides(config, name)}
    return {"hparams": hparams, "source": source(path, frozen, chosen_by)}


def check_config(
    config: dict[str, Any], schema_path: str | os.PathLike, *, check_results: bool = True
) -> dict[str, Any]:
    """Validate ``config``; return it with ``forget`` resolved to a list of class indices."""
    validate_schema(config, schema_path)
    spec = get_spec(config["dataset"])
    if config["forget"] != "all":
        for c in config["forget"]:
            if not 0 <= c < spec.num_classes:
                raise ConfigError(
                    f"config key forget: class {c} is out of range for "
                    f'{spec.name}; allowed 0..{spec.num_classes - 1} or "all"'
                )
    declared = _hparams_schema(yaml.safe_load(Path(schema_path).read_text()))
    check_variants(config, declared)
    _check_names(config, "methods", config["methods"], declared)
    for m in config["methods"]:
        base = base_method(config, m)
        if base not in config["hparams"]:
            what = f"method {m!r} is selected" if base == m else f"variant {m!r} of it is listed"
            raise ConfigError(
                f"config key hparams.{base}: missing; {what} in methods, so its "
                f"hyperparameters must be given"
            )
    check_tuning(config, schema_path)
    check_forget_score(config)
    load_tuned(config, {m: list(names) for m, names in declared.items()})
    # data.source is not checked here: a plan (snakemake -n) or stand-in data never reads it,
    # and a missing folder fails the download job alone, with the same message
    # (pbu.data._adopt_source).
    data = config["data"]
    if data.get("max_image_size") is not None and not data.get("stand_in", False):
        raise ConfigError(
            "config key data.max_image_size: applies to stand-in data only; set "
            "data.stand_in: true or data.max_image_size: null"
        )
    size = spec.image_size  # the size the models will get: stand-in images may be smaller
    if data.get("stand_in", False) and data.get("max_image_size") is not None:
        size = min(size, data["max_image_size"])
    problem = stem_problem(config["archs"], config["model"]["stem"], size)
    if problem:
        raise ConfigError(f"config key model.stem: {problem}")
    if config["model"]["weights"] == "imagenet" and set(config["archs"]) & {"small_cnn", "allcnn"}:
        raise ConfigError(
            "config key model.weights: imagenet weights exist only for the "
            "torchvision archs, not small_cnn or allcnn"
        )
    if check_results:
        check_writable(config["results"])
    resolved = dict(config)
    resolved["forget"] = forget_classes(config)
    resolved["variants"] = variants(config)
    resolved.setdefault("unlearn_batch", False)
    return resolved


def schema_markdown(schema_path: str | os.PathLike, defaults: dict[str, Any]) -> str:
    """config/README.md: every key of the schema with its type, default and description.

    Generated from the schema (``python -m pbu.config > config/README.md``); a test keeps the
    committed file in sync.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = [
        "# Configuration keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `python -m pbu.config > "
        "config/README.md`; a test keeps it in sync. `config/config.yaml` is the embedded "
        "default; `snakemake --configfile other.yaml` merges another file over it (nested keys "
        "merge), e.g. `config/paper/*.yaml` or `.test/config.yaml`. Unknown keys are errors.",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]

    def typ(node: dict[str, Any]) -> str:
        if "enum" in node:
            return " \\| ".join(f"`{v}`" for v in node["enum"])
        if "oneOf" in node:
            return " or ".join(typ(n) for n in node["oneOf"])
        if "const" in node:
            return f"`{node['const']}`"
        t = node.get("type", "")
        if t == "array":
            return f"list of {typ(node.get('items', {}))}"
        return " or ".join(t) if isinstance(t, list) else str(t)

    def row(name: str, sub: dict[str, Any], shown: str) -> None:
        desc = str(sub.get("description", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| `{name}` | {typ(sub) if sub.get('type') != 'object' else 'mapping'} "
            f"| {shown} | {desc} |"
        )

    def walk(node: dict[str, Any], prefix: str, default: Any) -> None:
        for key, sub in node.get("properties", {}).items():
            name = f"{prefix}{key}"
            dflt = default.get(key) if isinstance(default, dict) else None
            shown = (
                ""
                if isinstance(dflt, dict)
                else f"`{json.dumps(dflt)}`"
                if dflt is not None or (isinstance(default, dict) and key in default)
                else ""
            )
            row(name, sub, shown)
            if sub.get("type") == "object":
                walk(sub, f"{name}.", dflt or {})
        # a mapping of names chosen by the user (e.g. variants.<name>): its entries' schema
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("description") and prefix:
            row(f"{prefix}<name>", extra, "")
            if extra.get("type") == "object":
                walk(extra, f"{prefix}<name>.", {})

    walk(schema, "", defaults)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - developer tool
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.stdout.write(
        schema_markdown(
            root / "workflow/schemas/config.schema.yaml",
            yaml.safe_load((root / "config/config.yaml").read_text()),
        )
    )
