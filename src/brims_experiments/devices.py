"""Devices named in configs and flags (``cpu``, ``cuda``, ``cuda:<index>``), checked against this machine."""

from __future__ import annotations

import torch

from brims_experiments.config_files import ConfigError


def parse_device(name: str, what: str) -> torch.device:
    """``name`` as ``cpu``, ``cuda`` or ``cuda:<index>``; else a :class:`ConfigError` that names ``what``
    (the flag or field it came from). Whether this machine has it is :func:`check_device`'s question."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} must be cpu or cuda[:index], got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} must be cpu or cuda[:index], got {name!r}")
    return device


def check_device(name: str, what: str) -> torch.device:
    """``name`` as a device this machine has (``cpu``, ``cuda``, ``cuda:<index>``); else a
    :class:`ConfigError` that names ``what``."""
    device = parse_device(name, what)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name}, but no CUDA device is available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what}={name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
