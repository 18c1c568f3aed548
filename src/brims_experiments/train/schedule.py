"""The learning-rate schedule every model of a run shares: constant, or a cosine decay over the budget.

With ``train.lr_schedule=cosine`` the learning rate at optimiser step ``t`` of a budget of ``T`` steps is

    lr(t) = lr * (f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2),    f = train.lr_final_fraction

so it starts at ``train.lr`` and ends at ``f * train.lr`` on the budget's last step. A decay to (near)
zero ends every curve flat, which is what lets a converged-budget suite (issue 21) reach the LSTM's
plateau within a session per run; the budget ``T`` is fixed when the run starts, so a cosine run
cannot be extended by a resume (:func:`brims_experiments.run_folder.amend_run_config` refuses).
Not from the papers: both trained with a constant rate (the authors' code: Adam, no schedule).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate_factor(schedule: str, step: int, total_steps: float, final_fraction: float) -> float:
    """The multiple of ``train.lr`` at optimiser step ``step`` (0-based) of a budget of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    progress = min(step, total_steps) / total_steps
    return final_fraction + (1.0 - final_fraction) * (1.0 + math.cos(math.pi * progress)) / 2.0
