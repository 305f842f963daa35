"""Model factory by name, adapted to a dataset's classes, channels and image size.

``build_model(name, num_classes=..., in_channels=..., image_size=..., weights="none",
stem=None)``; ``stem`` chooses the first layers of the torchvision archs (``pbu.registry.STEMS``).
torchvision is imported only for its architectures, so the small CNN path stays light.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from pbu.registry import (
    ARCHS,
    DEFAULT_STEM,
    STEM_ARCHS,
    WEIGHTS,
    DatasetSpec,
    resolve_stem,
    stem_problem,
)

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """A CNN sized for the CPU default: conv(16)-pool-conv(32)-pool-fc(64)-fc(classes).

    ``[B, C, 28, 28] -> [B, 16, 14, 14] -> [B, 32, 7, 7] -> [B, 64] -> [B, classes]``.
    BatchNorm after each conv, as in the paper's architectures, so BN mode matters here too.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AllCNN(nn.Module):
    """All-CNN-C (Springenberg et al. 2015), with BatchNorm as in the unlearning literature."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, image_size: int = 32, width: int = 96
    ) -> None:
        super().__init__()
        w1, w2 = width, 2 * width

        def block(cin: int, cout: int, k: int, stride: int = 1, pad: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(in_channels, w1, 3),
            *block(w1, w1, 3),
            *block(w1, w1, 3, 2),
            nn.Dropout(0.5),
            *block(w1, w2, 3),
            *block(w2, w2, 3),
            *block(w2, w2, 3, 2),
            nn.Dropout(0.5),
            *block(w2, w2, 3),
            *block(w2, w2, 1, pad=0),
            nn.Conv2d(w2, num_classes, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_model(
    name: str, num_classes: int, in_channels: int, image_size: int, weights: str, stem: str
) -> nn.Module:
    from torchvision import models as tvm

    ctor, wenum = {
        "resnet18": (tvm.resnet18, "ResNet18_Weights"),
        "resnet34": (tvm.resnet34, "ResNet34_Weights"),
        "resnet50": (tvm.resnet50, "ResNet50_Weights"),
        "densenet121": (tvm.densenet121, "DenseNet121_Weights"),
        "convnext_tiny": (tvm.convnext_tiny, "ConvNeXt_Tiny_Weights"),
        "convnext_large": (tvm.convnext_large, "ConvNeXt_Large_Weights"),
    }[name]
    w = getattr(tvm, wenum).IMAGENET1K_V1 if weights == "imagenet" else None
    try:
        model = ctor(weights=w)
    except Exception as err:  # noqa: BLE001 - torch hub raises URLError, RuntimeError, ...
        raise RuntimeError(
            f"could not fetch ImageNet weights for {name} ({type(err).__name__}: {err}); run "
            f"`pbu download-weights {name}` on a machine with internet, or set weights: none"
        ) from err
    # The stem (pbu.registry.STEMS). "imagenet" keeps torchvision's layers and, with 3 input
    # channels, their ImageNet weights; another channel count gets a fresh conv of the same shape,
    # as the authors' MNIST notebook does (nn.Conv2d(1, 64, 7, 2, 3), max-pool kept). "cifar" puts
    # a fresh 3x3 stride-1 conv and no pool (ResNet, DenseNet) or 2x2 patches (ConvNeXt) in front.
    fresh = stem == "cifar" or in_channels != 3
    if name.startswith("resnet") or name == "densenet121":
        k, s, p = (7, 2, 3) if stem == "imagenet" else (3, 1, 1)
        conv = nn.Conv2d(in_channels, 64, k, s, p, bias=False) if fresh else None
        if name.startswith("resnet"):
            if conv is not None:
                model.conv1 = conv
            if stem == "cifar":
                model.maxpool = nn.Identity()
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:
            if conv is not None:
                model.features.conv0 = conv
            if stem == "cifar":
                model.features.pool0 = nn.Identity()
            model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    else:  # convnext: the stem is one patchify conv, 4x4 stride 4 in torchvision
        patchify = model.features[0][0]
        if fresh:
            k = 4 if stem == "imagenet" else 2
            model.features[0][0] = nn.Conv2d(in_channels, patchify.out_channels, k, k)
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    weights: str = "none",
    stem: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a fresh model. ``weights``: "none" (random init, seeded by the caller) or
    "imagenet" (torchvision's ImageNet-1k weights; a replaced stem conv and the head stay random).
    ``stem`` (torchvision archs only, :data:`pbu.registry.STEMS`): "imagenet" (default:
    torchvision's own 7x7 stride-2 conv + max-pool, ConvNeXt's 4x4 patchify) or "cifar" (3x3
    stride 1 without pool, ConvNeXt 2x2 patches). An input too small for the chosen stem is an
    error here, not a shape error in the first forward pass."""
    if name not in ARCHS:
        raise KeyError(f"unknown arch {name!r}; known: {', '.join(ARCHS)}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; allowed: {', '.join(WEIGHTS)}")
    if name not in STEM_ARCHS:
        if stem is not None:
            raise ValueError(
                f"{name} has a single stem; stem={stem!r} applies only to {', '.join(STEM_ARCHS)}"
            )
        if weights != "none":
            raise ValueError(f"{name} has no pretrained weights; use weights: none")
        cls = SmallCNN if name == "small_cnn" else AllCNN
        return cls(num_classes, in_channels, image_size, **kwargs)
    problem = stem_problem([name], stem or DEFAULT_STEM, image_size)
    if problem:
        raise ValueError(problem)
    stem = resolve_stem(name, stem)
    return _torchvision_model(name, num_classes, in_channels, image_size, weights, stem)


def model_args(arch: str, spec: DatasetSpec, stem: str | None = None) -> dict[str, Any]:
    """The :func:`build_model` arguments a checkpoint records for ``arch`` on ``spec``'s data:
    the classes, channels and image size, and for a torchvision arch its resolved stem (so the
    checkpoint rebuilds the same layers whatever the default becomes)."""
    args: dict[str, Any] = {
        "num_classes": spec.num_classes,
        "in_channels": spec.channels,
        "image_size": spec.image_size,
    }
    resolved = resolve_stem(arch, stem)
    if resolved is None and stem is not None:
        raise ValueError(
            f"{arch} has a single stem; a stem ({stem!r}) applies only to {', '.join(STEM_ARCHS)}"
        )
    if resolved is not None:
        args["stem"] = resolved
    return args


def legacy_stem(image_size: int) -> str:
    """The stem a checkpoint saved before ``model.stem`` existed was built with: the factory then
    chose the small-image stem for images of at most 64 pixels, torchvision's above."""
    return "cifar" if image_size <= 64 else "imagenet"


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each Conv2d -> BatchNorm2d pair of an ``nn.Sequential`` folded
    into one convolution (the same affine map, so outputs agree to float rounding: ~1e-6 on the
    small CNN's logits). Measured ~1.4x faster inference of the small CNN on CPU
    (``benchmarks/bench_pipeline.py`` notes). The model itself is not touched."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    channels_last = any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    if channels_last:
        fused.to(memory_format=torch.channels_last)
    return fused


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
