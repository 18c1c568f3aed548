"""The experiments of the BRIMs and RIMs papers on the `brims` library: tasks, data, the training
harness (Lightning), reinforcement learning, presets and the `brims` command.

``load_run(path)`` loads a trained run for use outside the command line
(:mod:`brims_experiments.trained`).
"""

from __future__ import annotations

from typing import Any


def load_run(path: Any, device: Any = "cpu") -> Any:
    """:func:`brims_experiments.trained.load_run` (imported on first use: the package stays light)."""
    from brims_experiments.trained import load_run as load

    return load(path, device)
