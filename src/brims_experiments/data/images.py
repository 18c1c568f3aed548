"""Prepared image data sets: one verified tensor file per split.

A split file holds ``images`` ``(N, H, W, C)`` uint8 and ``labels`` ``(N,)`` int64 and is
read with ``torch.load(weights_only=True)`` after its sha256 matched the manifest.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from brims_experiments.data.store import DataCorruptError, atomic_write, data_root, verified_file, write_manifest
from brims_experiments.data.store import fetch_hint as store_fetch_hint


@dataclass(frozen=True)
class ImageDatasetInfo:
    name: str
    size: int  # native height = width
    channels: int
    classes: int


IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    "mnist": ImageDatasetInfo("mnist", 28, 1, 10),
    "fashion-mnist": ImageDatasetInfo("fashion-mnist", 28, 1, 10),
    "cifar10": ImageDatasetInfo("cifar10", 32, 3, 10),
}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSplit:
    images: torch.Tensor  # (N, H, W, C) uint8
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataCorruptError(f"images must be (N, H, W, C) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataCorruptError(
                f"labels must be ({self.images.shape[0]},) int64, got {tuple(self.labels.shape)} {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]


def fetch_hint(name: str, root: Path | str | None = None) -> str:
    """The ``brims fetch`` command of an image set (CIFAR-10 needs its own archive)."""
    source = "<folder holding cifar-10-batches-py or cifar-10-python.tar.gz>" if name == "cifar10" else None
    return store_fetch_hint(name, root, source)


def _check_name(name: str) -> ImageDatasetInfo:
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[name]


def save_image_dataset(name: str, splits: dict[str, ImageSplit], root: Path | None = None) -> Path:
    """Write every split atomically, then the manifest that marks the data set complete."""
    info = _check_name(name)
    folder = data_root(root) / name
    (folder / "manifest.json").unlink(missing_ok=True)  # incomplete until the new manifest lands
    for split, data in splits.items():
        if data.images.shape[1:] != (info.size, info.size, info.channels):
            raise DataCorruptError(f"{name} {split}: images {tuple(data.images.shape[1:])}, expected "
                                   f"({info.size}, {info.size}, {info.channels})")
        buffer = io.BytesIO()
        torch.save({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, buffer)
        atomic_write(folder / f"{split}.pt", lambda h, buffer=buffer: h.write(buffer.getvalue()))
    write_manifest(folder, [f"{split}.pt" for split in splits], {"dataset": name})
    return folder


def load_image_split(name: str, split: str, root: Path | str | None = None) -> ImageSplit:
    """A verified split of a prepared data set (``split`` is ``train`` or ``test``)."""
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = verified_file(data_root(root) / name, f"{split}.pt", fetch_hint(name, root))
    try:
        payload = torch.load(path, weights_only=True)
        return ImageSplit(payload["images"], payload["labels"])
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as error:
        raise DataCorruptError(f"{path}: unreadable split file ({error}); rerun: {fetch_hint(name, root)}") from None
