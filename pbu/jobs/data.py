"""The data jobs: the prepared dataset file, and the ImageNet weights in the torch hub cache.

Both run where the internet is (Snakemake ``localrules``); every later job reads only files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pbu.errors import UsageError

log = logging.getLogger(__name__)


def download(
    dataset: str,
    out: str | os.PathLike,
    *,
    root: str | os.PathLike = "data",
    source: str | os.PathLike | None = None,
    allow_download: bool = True,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    keep_classes: Iterable[int] = (),
    keep_per_class: int = 0,
    stand_in: bool = False,
    stand_in_seed: int = 0,
    max_image_size: int | None = None,
) -> dict[str, Any]:
    """Write ``dataset``'s train and test splits to the prepared file ``out``.

    ``stand_in``: generated images of the dataset's shape and sizes (seeded by
    ``stand_in_seed``, at most ``max_image_size`` pixels a side), nothing fetched. Otherwise the
    files come from ``source`` (a folder already holding the originals) or ``root`` (torchvision's
    data root, downloading unless ``allow_download`` is false). ``max_*_per_class`` keep a
    class-stratified, seeded subset (CI-sized runs of large datasets); the ``keep_classes`` (the
    forget classes) keep up to ``keep_per_class`` images each under those caps, since the
    evaluation's 5-fold loss attack needs 5 per side.

    Returns what was written: dataset, sample counts, the file.
    """
    from pbu.data import load_dataset, save_prepared, stand_in_dataset, stratified_subset

    if stand_in:
        try:
            train, test = stand_in_dataset(
                dataset, seed=stand_in_seed, max_image_size=max_image_size
            )
        except ValueError as err:
            raise UsageError(f"max_image_size (--max-image-size): {err}") from None
    else:
        train, test = load_dataset(dataset, root, source=source, download=allow_download)
    keep = {c: keep_per_class for c in keep_classes}
    if max_train_per_class:
        train = train.subset(stratified_subset(train.labels, max_train_per_class, 0, at_least=keep))
    if max_test_per_class:
        test = test.subset(stratified_subset(test.labels, max_test_per_class, 1, at_least=keep))
    save_prepared(out, train, test)
    log.info("%s: %d train / %d test samples -> %s", dataset, len(train), len(test), out)
    return {
        "dataset": dataset,
        "stand_in": stand_in,
        "train_samples": len(train),
        "test_samples": len(test),
        "out": str(out),
    }


def download_weights(arch: str, out: str | os.PathLike) -> dict[str, Any]:
    """Fetch ``arch``'s ImageNet weights into the torch hub cache and write the marker file
    ``out`` once they are there."""
    from pbu.models import build_model

    build_model(arch, num_classes=1000, in_channels=3, image_size=224, weights="imagenet")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{arch} ImageNet weights are in the torch hub cache\n")
    return {"arch": arch, "weights": "imagenet", "out": str(out)}
