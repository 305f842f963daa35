"""Validate and resolve a pipeline config before any job starts (torch-free, cheap to import).

``check_config(config, schema_path)`` applies the JSON schema (draft 2020-12, strict) and the
checks a schema cannot express (a forget class must exist in the chosen dataset, every selected
method needs its hyperparameters, the results folder must be writable). Each problem is reported
in one line that names the key and what is allowed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pbu.registry import get_spec


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
        raise ConfigError(f"config key results: cannot write to {folder} ({err.strerror}); "
                          f"choose a writable folder") from None


def forget_classes(config: dict[str, Any]) -> list[int]:
    """The forget classes, with ``all`` expanded for the config's dataset."""
    k = get_spec(config["dataset"]).num_classes
    return list(range(k)) if config["forget"] == "all" else list(config["forget"])


def check_config(config: dict[str, Any], schema_path: str | os.PathLike, *,
                 check_results: bool = True) -> dict[str, Any]:
    """Validate ``config``; return it with ``forget`` resolved to a list of class indices."""
    validate_schema(config, schema_path)
    spec = get_spec(config["dataset"])
    if config["forget"] != "all":
        for c in config["forget"]:
            if not 0 <= c < spec.num_classes:
                raise ConfigError(f"config key forget: class {c} is out of range for "
                                  f"{spec.name}; allowed 0..{spec.num_classes - 1} or \"all\"")
    for m in config["methods"]:
        if m not in config["hparams"]:
            raise ConfigError(f"config key hparams.{m}: missing; method {m!r} is selected in "
                              f"methods, so its hyperparameters must be given")
    if config["data"]["source"] is not None and not Path(config["data"]["source"]).is_dir():
        raise ConfigError(f"config key data.source: {config['data']['source']} is not a folder")
    if config["model"]["weights"] == "imagenet" and set(config["archs"]) & {"small_cnn", "allcnn"}:
        raise ConfigError("config key model.weights: imagenet weights exist only for the "
                          "torchvision archs, not small_cnn or allcnn")
    if check_results:
        check_writable(config["results"])
    resolved = dict(config)
    resolved["forget"] = forget_classes(config)
    return resolved
