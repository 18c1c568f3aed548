"""PNG figures of a run: learning curves, the experiment's test figures, and what the modules do.

The module figure is the paper's kind: for one test sequence, which modules are active at
each step (per layer), and how the input attention splits between the null, bottom-up and
top-down slots over time (averaged over heads and modules).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch

from brims_experiments.figures import save_figure, title_of
from brims_experiments.run_folder import STEPS_COLUMN, read_log_rows

matplotlib.use("Agg")  # files only (pyplot picks its backend at the first figure, not at import)

log = logging.getLogger(__name__)
SLOT_NAMES = ("null", "bottom-up", "top-down")


def read_log(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from the CSV log; a step logged twice (a resumed
    run replays the steps after its last checkpoint) keeps its last value."""
    path = run_dir / "logs" / "metrics.csv"
    series: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return {}
    for row in read_log_rows(path):
        for key, value in row.items():
            if key not in (STEPS_COLUMN, "epoch"):
                series.setdefault(key, {})[row[STEPS_COLUMN]] = value
    return {key: sorted(points.items()) for key, points in series.items()}


# What a logged metric is, in words; the lower-is-better ones are drawn on a log axis.
METRIC_WORDS = {"loss": "loss", "acc": "accuracy", "sequence_acc": "exact-sequence accuracy",
                "mse": "mean squared error", "bpc": "bits per character",
                "rollout_bce": "BCE per frame, closed-loop rollout (nats)"}
HIGHER_IS_BETTER = ("acc", "sequence_acc")


def loss_axis(axis: Any, values: Sequence[float], label: str) -> None:
    """Label ``axis`` ``label`` and give it a log y-scale for ``values`` (losses, errors) that are all
    positive, else a symlog one (linear near 0, where a log axis cannot go), saying which in the label:
    on a linear axis a loss that falls by orders of magnitude looks like 0 after its first drop."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        axis.set_ylabel(label)
        return
    if min(finite) > 0:
        axis.set_yscale("log")
        axis.set_ylabel(f"{label} (log scale)")
        return
    sizes = [abs(v) for v in finite if v != 0]
    axis.set_yscale("symlog", linthresh=min(sizes) if sizes else 1.0)
    axis.set_ylabel(f"{label} (symlog scale: linear near 0)")


def learning_curves_figure(series: dict[str, list[tuple[int, float]]], title: str, metric: str) -> Any:
    """Two panels: the training loss at every logged step, and the validation ``metric`` at every
    validation (the validation loss where the task logs no ``metric``, as word-level language models).

    Each panel used to draw the training and the validation curve of one key, the loss and then
    ``metric``; for the tasks whose metric is their loss (adding: ``mse``; character-level language
    models: ``bpc``, the loss in bits) the two panels were the same picture. Losses and errors are drawn
    on a log axis; accuracies on a linear one, in %."""
    key = metric if f"val/{metric}" in series else "loss"
    panels = [("train/loss", "training loss", "at every logged training step", "-"),
              (f"val/{key}", f"validation {METRIC_WORDS.get(key, key)}", "at every validation", "o-")]
    panels = [panel for panel in panels if series.get(panel[0])]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for (name, label, when, style), axis in zip(panels, axes[0]):
        steps, values = zip(*series[name])
        if name.split("/")[1] in HIGHER_IS_BETTER:
            axis.plot(steps, [100 * v for v in values], style, markersize=3)
            axis.set_ylabel(f"{label} (%)")
        else:
            axis.plot(steps, values, style, markersize=3)
            loss_axis(axis, values, label)
        axis.set_title(f"{label}, {when}", fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_learning_curves(run_dir: Path, title: str, metric: str) -> Path | None:
    """``learning_curves.png`` of the run folder's CSV log (:func:`learning_curves_figure`)."""
    figure = learning_curves_figure(read_log(run_dir), title, metric)
    if figure is None:
        return None
    path = run_dir / "learning_curves.png"
    save_figure(figure, path)
    return path


def plot_test_summary(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """:func:`summary_figure` saved at ``path``."""
    save_figure(summary_figure(runs, title), path)
    return path


def summary_figure(runs: Sequence[dict[str, Any]], title: str) -> Any:
    """The test results of ``runs`` (their ``metrics.json``, of one experiment) in one figure, one line
    per run: the experiment's ``summary_figure``."""
    from brims_experiments.experiments import experiment_of_metrics

    return experiment_of_metrics(runs[0]).summary_figure(list(runs), title)


@torch.no_grad()
def plot_module_activity(run_dir: Path, task: Any, model: Any) -> Path | None:
    """For one test sequence: which modules are active at each step of each layer, and how the
    input attention splits between the null, bottom-up and top-down slots."""
    if not model.core.is_modular:
        return None
    inputs, caption = task.activity_input()  # (1, T, F)
    device = next(model.parameters()).device
    result = model(inputs.to(device), return_diagnostics=True)
    output, diagnostics = result[0], result[-1]  # a language model also returns its state
    prediction = task.prediction_words(output)
    layers = len(diagnostics.active)
    header = task.activity_header
    figure, axes = plt.subplots(layers + 1, 2, figsize=(12, 2.2 * (layers + header)), squeeze=False,
                                gridspec_kw={"width_ratios": [3, 2], "height_ratios": [header] + [1] * layers})
    task.draw_activity_input(axes[0], inputs, caption, prediction)
    for layer in range(layers):
        active = diagnostics.active[layer][:, 0].float().cpu()  # (T, n)
        attention = diagnostics.attention[layer][:, 0].float().cpu()  # (T, n, slots)
        row = axes[layer + 1]
        row[0].imshow(active.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")  # always-on: black
        row[0].set_yticks(range(active.shape[1]))
        row[0].set_ylabel(f"layer {layer + 1}\nmodule")
        row[0].set_xlabel("step")
        row[0].set_title(f"layer {layer + 1}: active modules (black)")
        per_slot = attention.mean(1)  # (T, slots)
        for slot in range(per_slot.shape[-1]):
            row[1].plot(per_slot[:, slot], label=SLOT_NAMES[slot], linewidth=1)
        row[1].set_ylim(0, 1)
        row[1].set_title(f"layer {layer + 1}: input attention by slot")
        row[1].legend(fontsize=7, loc="upper right")
        row[1].set_xlabel("step")
    figure.tight_layout()
    path = run_dir / "module_activity.png"
    save_figure(figure, path)
    return path


def plot_run(run_dir: Path, task: Any, model: Any, metrics: dict[str, Any]) -> list[Path]:
    """Every figure of a tested run: its learning curves, the task's test figures, module activity."""
    title = title_of(metrics)
    made = [plot_learning_curves(run_dir, title, task.learning_metric), *task.figures(run_dir, model, metrics, title),
            plot_module_activity(run_dir, task, model)]
    return [path for path in made if path is not None]
