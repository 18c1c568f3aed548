"""Checkpoints: written atomically (``kill -9`` at any moment leaves the previous one intact), read
safely (``weights_only``: no code is unpickled) and refused by name when they are not ours."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from brims_experiments.data.store import atomic_write

FORMAT_KEY = "brims"


FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or not one of ours."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A brims checkpoint as a dict, loaded safely; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any file may be given: whatever torch raises on it is "not ours"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is corrupted or not a safe checkpoint: {first_line}") from None
    header = checkpoint.get(FORMAT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(header, dict) or "config" not in header:
        raise CheckpointError(f"{path} is not a brims training checkpoint (no {FORMAT_KEY!r} header)")
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {header.get('format')!r}; this brims reads {FORMAT_VERSION}")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic saves, safe loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location if map_location is not None else "cpu")
