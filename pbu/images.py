"""Image containers and their loaders: every split is an :class:`ImageData` (labels as an int64
tensor plus a way to make batches).

- :class:`TensorImages`: the whole split as one uint8 tensor ``[N, C, H, W]`` (on the GPU when
  asked); augmentation (random crop with padding, horizontal flip) runs per batch on tensors.
- :class:`FileImages`: image files decoded by a torch DataLoader with PIL transforms (Food-101).
- :class:`StandInImages`: any dataset's shape, classes and split sizes, generated per batch from
  the images' ids (no download; :func:`stand_in_dataset`).

``subset(idx)`` always returns a *copy* holding only the selected samples. The unlearning harness
relies on this: a method handed the forget subset cannot reach the retain samples through it.
:mod:`pbu.data` (splits, loading, prepared files) builds on this module and re-exports its names.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from pbu.registry import DatasetSpec, get_spec

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------------------------
# Containers and loaders
# --------------------------------------------------------------------------------------------


class ImageData(Protocol):
    """A split of a dataset: labels plus batches of normalised images."""

    spec: DatasetSpec
    labels: Tensor

    def __len__(self) -> int: ...

    def subset(self, idx: Tensor) -> ImageData: ...

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        workers: int = 0,
    ) -> Loader: ...


class Loader(Protocol):
    """Re-iterable batches ``(x float [B,C,H,W] normalised, y int64 [B])``; ``len`` = batches."""

    batch_size: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    @property
    def num_samples(self) -> int: ...


def _to_device(t: Tensor, dev: torch.device) -> Tensor:
    """A small host tensor onto ``dev``. To CUDA it goes through pinned memory with
    ``non_blocking``: a plain ``.to("cuda")`` from pageable memory waits for every queued kernel
    (the previous training step) before copying, which would stall the GPU once per batch."""
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def cycle(loader: Iterable[Batch]) -> Iterator[Batch]:
    """Endless batches: restart ``loader`` (a new shuffle) whenever it runs out."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("cannot cycle an empty loader")


def augment_batch(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (zero padding of size/8) and, for ``crop_flip``, horizontal flip, per sample.

    ``x`` is ``[B, C, H, W]`` (any dtype). Everything is one gather, so it runs on the device.
    """
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    # Drawn on the host from the loader's generator, so CPU and GPU see the same crops.
    off = _to_device(torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device="cpu"), dev)
    rows = off[0][:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = off[1][:, None] + torch.arange(w, device=dev)  # [B, W]
    if mode == "crop_flip":
        flip = _to_device(torch.rand(b, generator=generator, device="cpu"), dev) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    elif mode != "crop":
        raise ValueError(f"unknown augmentation {mode!r}; allowed: none, crop, crop_flip")
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class TensorLoader:
    """Batches straight from uint8 tensors: seeded shuffling, augmentation on the device."""

    def __init__(
        self,
        data: TensorImages | StandInImages,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        augment: bool,
        device: str | torch.device,
        drop_last: bool,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = data.spec.augment if augment else "none"
        self.device = torch.device(device)
        self.images = data.images.to(self.device) if isinstance(data, TensorImages) else None
        self.labels = data.labels.to(self.device)
        self.mean = torch.tensor(data.spec.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(data.spec.std, device=self.device).view(1, -1, 1, 1) * 255
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _images(self, idx: Tensor) -> Tensor:
        """uint8 ``[b, C, H, W]`` of the samples at positions ``idx`` (on the device)."""
        return self.images[idx]

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for k in range(len(self)):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            x = augment_batch(self._images(idx), self.augment, self.generator)
            yield (x.float() - self.mean) / self.std, self.labels[idx]


@dataclass
class TensorImages:
    """A whole split held as ``images`` uint8 ``[N, C, H, W]`` and ``labels`` int64 ``[N]``."""

    spec: DatasetSpec
    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N,C,H,W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor) -> TensorImages:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.labels.device)
        return TensorImages(self.spec, self.images[idx].clone(), self.labels[idx].clone())

    def to(self, device: str | torch.device) -> TensorImages:
        return TensorImages(self.spec, self.images.to(device), self.labels.to(device))

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        workers: int = 0,
    ) -> TensorLoader:
        return TensorLoader(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            augment=augment,
            device=device,
            drop_last=drop_last,
        )


class _FileDataset(torch.utils.data.Dataset):
    """Only the listed files: a method handed a subset cannot reach the others."""

    def __init__(self, files: list[str], labels: Tensor, transform) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


class FileLoader:
    """A torch DataLoader over image files, yielding ``(x, y)`` on ``device``."""

    def __init__(
        self,
        data: FileImages,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        augment: bool,
        device: str | torch.device,
        drop_last: bool,
        workers: int,
    ) -> None:
        from torchvision import transforms as T

        s = data.spec
        size = s.image_size
        if augment:
            tf = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            tf = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
        tf += [T.ToTensor(), T.Normalize(s.mean, s.std)]
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._n = len(data)
        self.loader = torch.utils.data.DataLoader(
            _FileDataset(data.files, data.labels, T.Compose(tf)),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    @property
    def num_samples(self) -> int:
        return self._n

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass
class FileImages:
    """A split stored as image files (Food-101)."""

    spec: DatasetSpec
    files: list[str]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: Tensor) -> FileImages:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return FileImages(
            self.spec, [self.files[i] for i in idx.tolist()], self.labels[idx].clone()
        )

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        workers: int = 0,
    ) -> FileLoader:
        return FileLoader(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            augment=augment,
            device=device,
            drop_last=drop_last,
            workers=workers,
        )


# --------------------------------------------------------------------------------------------
# Stand-in data: a real dataset's shape, classes and split sizes, generated (no download)
# --------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_TEST_ID_OFFSET = 1 << 30  # test images get ids of their own: new draws of the same classes
_TEMPLATE_GRID = 4  # a class's smooth pattern: a random 4x4 grid per channel, upsampled
_STAND_IN_STD = 36.0  # standard deviation of the raw mixture below (measured), to rescale it


def _hash32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash, elementwise, of int64 values below 2^32.

    Every product stays below 2^59 (no overflow), so it gives the same bits on every device:
    a stand-in image depends only on the seed, its class and its id, never on a generator's
    state, so batches can be drawn in any order, subset or on any device."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def _uniform(keys: Tensor) -> Tensor:
    """float32 in [0, 1) from int64 keys, exactly representable (24 bits)."""
    return (_hash32(keys) >> 8).float() / float(1 << 24)


def _base_key(spec: DatasetSpec, seed: int, device: torch.device) -> Tensor:
    """One key per (dataset name, seed): different datasets or seeds get different classes."""
    name = zlib.crc32(spec.name.encode())
    seed_key = _hash32(torch.tensor(seed & _M32, device=device))
    return _hash32(seed_key ^ name)


def stand_in_images(spec: DatasetSpec, ids: Tensor, labels: Tensor, seed: int) -> Tensor:
    """uint8 ``[B, C, H, W]`` stand-in images ``ids`` of classes ``labels``, on ``ids``' device.

    Class c has two kinds of structure, both fixed by (dataset, seed, c): a smooth pattern
    (a random 4x4 grid per channel, bilinearly upsampled: where it is bright or dark) and a
    grating (orientation, period and per-channel sign: a local texture that survives global
    pooling). Each image draws its own contrast, brightness, grating phase and per-pixel noise
    from its id; the noise is about as strong as the pattern. A small CNN trained for one epoch
    on 100 images per class of a 10-class stand-in reaches >95 % test accuracy (20 per class of
    100 classes: ~50 %), so accuracy rises, and unlearning a class has something to remove.
    Pixel statistics follow the dataset's mean and std per channel. Values agree across
    devices up to float rounding of the pattern (one grey level)."""
    dev = ids.device
    b, c, h = len(ids), spec.channels, spec.image_size
    base = _base_key(spec, seed, dev)
    lab = labels.to(dev).long()
    ids = ids.to(dev).long() & _M32
    g = _TEMPLATE_GRID
    # per class: template [B, C, g, g] and grating parameters (salted so they are independent)
    cls = _hash32(base ^ _hash32(lab * 4099 + 1))
    grid = _uniform(cls[:, None] ^ _hash32(torch.arange(c * g * g, device=dev) + 7))
    template = F.interpolate(
        (2 * grid - 1).view(b, c, g, g), size=(h, h), mode="bilinear", align_corners=False
    )
    theta = torch.pi * _uniform(cls ^ 0x1B873593)  # [B], per class
    period = (h / 28) * (2.5 + 4.5 * _uniform(cls ^ 0x68E31DA4))
    colour = 2 * _uniform(cls[:, None] ^ _hash32(torch.arange(c, device=dev) + 0x2F)) - 1
    colour = colour.sign() * (0.5 + 0.5 * colour.abs())  # never a vanishing channel
    # per image
    img = _hash32(base ^ _hash32(ids) ^ 0x5BD1E995)
    phase = 2 * torch.pi * _uniform(img ^ 0x3C6EF372)  # [B], per image
    contrast = 0.6 + 0.4 * _uniform(img ^ 0x0A54FF53)
    bright = 30.0 * (2 * _uniform(img ^ 0x10B7E1C5) - 1)
    pos = torch.arange(h, device=dev, dtype=torch.float32)
    arg = (
        pos[None, None, :] * torch.cos(theta)[:, None, None]
        + pos[None, :, None] * torch.sin(theta)[:, None, None]
    )  # [B, H, W]
    grating = torch.cos(2 * torch.pi * arg / period[:, None, None] + phase[:, None, None])
    grating = grating[:, None] * colour[:, :, None, None]  # [B, C, H, W]
    noise = (
        2
        * _uniform(
            img[:, None] ^ _hash32(torch.arange(c * h * h, device=dev) + 0x7F4A7C15)[None, :]
        )
        - 1
    )
    z = (
        contrast.view(b, 1, 1, 1) * (45.0 * template + 35.0 * grating)
        + bright.view(b, 1, 1, 1)
        + 40.0 * noise.view(b, c, h, h)
    ) / _STAND_IN_STD
    # the dataset's per-channel mean and standard deviation (before clipping), so normalised
    # batches look like the real ones to a model and its learning rate
    mean = torch.tensor(spec.mean, device=dev).view(1, c, 1, 1) * 255
    std = torch.tensor(spec.std, device=dev).view(1, c, 1, 1) * 255
    return (mean + std * z).round_().clamp_(0, 255).to(torch.uint8)


class StandInLoader(TensorLoader):
    """Batches of stand-in images, generated on the loader's device as they are needed (the
    whole of a 224-px Food-101 stand-in would take 11 GB as one tensor)."""

    def __init__(self, data: StandInImages, batch_size: int, **kwargs) -> None:
        super().__init__(data, batch_size, **kwargs)
        self.spec, self.seed = data.spec, data.seed
        self.ids = data.ids.to(self.device)

    def _images(self, idx: Tensor) -> Tensor:
        return stand_in_images(self.spec, self.ids[idx], self.labels[idx], self.seed)


@dataclass
class StandInImages:
    """A split of generated images: image ``ids[i]`` of class ``labels[i]`` (see
    :func:`stand_in_images`), drawn when a loader asks for it."""

    spec: DatasetSpec
    ids: Tensor
    labels: Tensor
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")
        self.ids, self.labels = self.ids.long(), self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor) -> StandInImages:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.labels.device)
        return StandInImages(self.spec, self.ids[idx].clone(), self.labels[idx].clone(), self.seed)

    def images(self) -> Tensor:
        """Every image of the split, uint8 ``[N, C, H, W]`` (small splits and tests)."""
        return stand_in_images(self.spec, self.ids, self.labels, self.seed)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        workers: int = 0,
    ) -> StandInLoader:
        return StandInLoader(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            augment=augment,
            device=device,
            drop_last=drop_last,
        )


def stand_in_dataset(
    name: str,
    *,
    seed: int = 0,
    max_image_size: int | None = None,
) -> tuple[StandInImages, StandInImages]:
    """``(train, test)`` stand-ins for dataset ``name``: its channels, classes and images per
    class in each split (``pbu.registry.SPLIT_COUNTS``), at its image size or at most
    ``max_image_size`` pixels a side. Seeded; nothing is downloaded or stored but ids."""
    from pbu.registry import SPLIT_COUNTS

    spec = get_spec(name)
    if max_image_size is not None:
        if max_image_size < 8:
            raise ValueError(f"max_image_size must be >= 8, got {max_image_size}")
        spec = replace(spec, image_size=min(spec.image_size, max_image_size))
    g = torch.Generator().manual_seed(seed)
    splits = []
    for counts, offset in zip(SPLIT_COUNTS[name], (0, _TEST_ID_OFFSET)):
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        labels = labels[torch.randperm(len(labels), generator=g)]  # classes interleaved
        splits.append(StandInImages(spec, torch.arange(len(labels)) + offset, labels, seed))
    return splits[0], splits[1]
