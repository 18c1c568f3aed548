"""A trained run, loaded for use outside the command line.

    from brims_experiments import load_run

    run = load_run("runs/smnist-cpu-brims")     # a run folder (its best checkpoint) or a .ckpt
    run.model                                   # the task's whole model, in eval mode
    run.core                                    # its recurrent core: a brims.BRIMs (or nn.LSTM)
    output, state = run.core(x)                 # x: (T, B, the core's input size)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from brims_experiments.experiments import experiment_of


class TrainedRun(NamedTuple):
    config: Any  # the run's ExperimentConfig (or RLConfig)
    model: nn.Module  # the task's model (or the RL agent), in eval mode
    core: nn.Module  # its recurrent core: brims.BRIMs for the modular kinds, torch.nn.LSTM for lstm
    checkpoint: Path  # the checkpoint the weights came from


def load_run(path: str | Path, device: torch.device | str = "cpu") -> TrainedRun:
    """The trained model of a run folder (its best checkpoint; RL: its last) or of a ``.ckpt`` file.

    Raises ``CheckpointError`` for a missing, corrupted or foreign checkpoint and ``ConfigError``
    for a config this version cannot read, as the command line does.
    """
    path = Path(path)
    return TrainedRun(*experiment_of(path).load_trained(path, device))
