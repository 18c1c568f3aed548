"""Figures: titles in words from a run's metrics, and PNG files saved atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from brims_experiments.data.store import atomic_write

MODEL_NAMES = {"brims": "BRIMs", "rims": "RIMs", "brims-no-top-down": "BRIMs without top-down", "lstm": "LSTM",
               "memoryless": "memoryless", "brims-all-active": "BRIMs, every module active"}


def title_of(metrics: dict[str, Any], with_model: bool = True) -> str:
    """A figure title in words from a run's ``metrics.json``: the model and what it learned (the
    experiment's ``data_words``)."""
    from brims_experiments.experiments import experiment_of_metrics

    data = experiment_of_metrics(metrics).data_words(metrics)
    model = MODEL_NAMES.get(str(metrics.get("model")), str(metrics.get("model")))
    return f"{model} on {data}" if with_model else data


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt  # the figure's own library, loaded only by those who plot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
