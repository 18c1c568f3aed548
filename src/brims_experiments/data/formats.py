"""Readers of the raw distribution formats: MNIST's idx files and CIFAR-10's python batches.

Both readers validate sizes against the header before building arrays, so a truncated file
raises :class:`DataCorruptError` instead of returning part of the data.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import torch

from brims_experiments.data.store import DataCorruptError

_IDX_UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (optionally gzip-compressed) of unsigned bytes as a uint8 tensor.

    Format: 2 zero bytes, type code ``0x08`` (ubyte), rank ``r``, then ``r`` big-endian
    uint32 sizes, then the data in C order.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataCorruptError(f"{path}: broken gzip stream ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataCorruptError(f"{path}: not an idx file of unsigned bytes (header {raw[:4].hex()})")
    rank = raw[3]
    header = 4 + 4 * rank
    if rank == 0 or len(raw) < header:
        raise DataCorruptError(f"{path}: idx header truncated")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    expected = header + _product(shape)
    if len(raw) != expected:
        raise DataCorruptError(f"{path}: {len(raw)} bytes, the header {shape} implies {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _product(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and numpy arrays; refuses every other class.

    CIFAR batches are pickles; a plain ``pickle.load`` would run whatever code a foreign
    file names, so only the numpy reconstruction functions are allowed.
    """

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays re-saved with pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch: images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` int64.

    The file is a pickled dict with ``b"data"`` (``N x 3072`` uint8, channel-major rows of
    1024 red, 1024 green, 1024 blue values) and ``b"labels"`` (N ints in ``0..9``).
    """
    import numpy as np  # only this reader needs numpy (pickled arrays)

    try:
        batch = _NumpyArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise DataCorruptError(f"{path}: not a CIFAR python batch ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataCorruptError(f"{path}: a CIFAR batch is a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataCorruptError(
            f"{path}: expected data (N, 3072) uint8 with N labels, got {data.shape} {data.dtype} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataCorruptError(f"{path}: labels outside 0..9")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy())  # (N, 32, 32, 3)
    return images, torch.from_numpy(labels)
