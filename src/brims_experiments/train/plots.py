"""PNG figures of a run: learning curves, accuracy by test resolution, and what the modules do.

The module figure is the paper's kind: for one test sequence, which modules are active at
each step (per layer), and how the input attention splits between the null, bottom-up and
top-down slots over time (averaged over heads and modules).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch

from brims_experiments.runs import save_figure, title_of

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
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row.get("step") or 0)
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                series.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}


# Per task: the test conditions in metrics.json, the metric to draw, and the axis labels.
SUMMARIES = {
    "seqimage": ("resolution", "acc", "test resolution (side in pixels)", "test accuracy (%)", 100.0,
                 "accuracy_by_resolution.png"),
    "copying": ("gap", "sequence_acc", "gap (blanks between symbols and delimiter)", "exact-sequence accuracy (%)",
                100.0, "accuracy_by_gap.png"),
    "adding": ("length", "mse", "sequence length", "test mean squared error", 1.0, "mse_by_length.png"),
    "lm": ("noise", "", "share of input tokens replaced at random", "", 1.0, "test_by_noise.png"),
}
LEARNING_METRIC = {"seqimage": "acc", "copying": "sequence_acc", "adding": "mse", "lm": "bpc", "video": "rollout_bce"}


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
    """:func:`summary_figure` (the video task's: ``plot_error_by_step``) saved at ``path``."""
    if runs[0].get("task") == "video":
        from brims_experiments.train.video_plots import plot_error_by_step

        return plot_error_by_step(runs, path, title)
    save_figure(summary_figure(runs, title), path)
    return path


def summary_figure(runs: Sequence[dict[str, Any]], title: str) -> Any:
    """One line per run's ``metrics.json``: the task's test metric against its test condition
    (resolution, gap, length or noise share); dotted: the training condition. An error (the adding
    problem's MSE, a language model's bits per character or perplexity) is drawn on a log axis: on a
    linear one beside the trivial predictor's MSE every trained model's looked like 0."""
    task = runs[0].get("task", "seqimage")
    key, metric, xlabel, ylabel, scale, _ = SUMMARIES[task]
    noisy = task == "seqimage" and any(metrics.get("noise") for metrics in runs)
    figure, axes = plt.subplots(1, 2 if noisy else 1, figsize=(10.5 if noisy else 5.5, 3.8), squeeze=False)
    axis = axes[0][0]
    drawn: list[float] = []
    for metrics in runs:
        if task == "lm":  # the clean test split at share 0, then each noise share
            metric = "bpc" if metrics["level"] == "char" else "ppl"
            ylabel = f"test {'bits per character' if metric == 'bpc' else 'perplexity'}"
            points = {0.0: metrics["test"], **{float(share): result for share, result in metrics["noise"].items()}}
        else:
            points = {int(c): result for c, result in metrics[key].items()}
        conditions = sorted(points)
        values = [scale * points[c][metric] for c in conditions]
        drawn += values
        axis.plot(conditions, values, "o-", label=metrics.get("label", metrics["model"]))
        if task != "lm":  # resolutions, gaps and lengths are whole numbers: tick exactly those tested
            axis.set_xticks(conditions)
        if "train_resolution" in metrics:
            axis.axvline(metrics["train_resolution"], color="grey", linestyle=":", linewidth=1)
    if "trivial_mse" in runs[0]:
        axis.axhline(runs[0]["trivial_mse"], color="grey", linestyle="--", linewidth=1, label="predict 1 (trivial)")
        drawn.append(runs[0]["trivial_mse"])
    axis.set_xlabel(xlabel)
    if task in ("adding", "lm"):  # errors: lower is better, over orders of magnitude
        loss_axis(axis, drawn, ylabel)
    else:
        axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    if noisy:
        _plot_noise(axes[0][1], runs, scale)
    return figure


def _plot_noise(axis: Any, runs: Sequence[dict[str, Any]], scale: float) -> None:
    """Grouped bars: each run's test accuracy on clean and on each kind of corrupted test images
    at the training resolution."""
    names = ["clean"] + sorted({name for metrics in runs for name in metrics.get("noise", {})})
    width = 0.8 / len(runs)
    for index, metrics in enumerate(runs):
        clean = metrics["resolution"].get(str(metrics.get("train_resolution")), {}).get("acc", float("nan"))
        values = [clean] + [metrics.get("noise", {}).get(name, {}).get("acc", float("nan")) for name in names[1:]]
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(names))]
        axis.bar(positions, [scale * v for v in values], width, label=metrics.get("label", metrics["model"]))
    axis.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axis.set_ylabel("test accuracy (%) at the training resolution")
    axis.set_title("noisy test images")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)


def _draw_input(axes: Any, config: Any, task: Any, inputs: torch.Tensor, caption: str, prediction: str) -> None:
    """Top row of the activity figure: what the model read."""
    if config.task == "video":  # the frames read, side by side (the later ones are the model's own)
        frames = inputs[0, : config.data.teacher_frames].float().cpu()  # (k, S, S)
        axes[0].imshow(torch.cat(list(frames), -1).numpy(), cmap="gray", interpolation="nearest")
        axes[0].set_title(f"{caption}: the {len(frames)} teacher-forced frames", fontsize=9)
        axes[0].axis("off")
        axes[1].axis("off")
        return
    if config.task == "lm":  # each token read, at its step: the same x axis as the activity below
        tokens = inputs[0].tolist()
        vocabulary = task.corpus().vocab
        axes[0].set_xlim(-0.5, len(tokens) - 0.5)
        for step, token in enumerate(tokens):
            text = vocabulary.decode([token]).replace("\n", "⏎") or " "
            axes[0].text(step, 0.0, text, rotation=90, ha="center", va="bottom", fontsize=6, family="monospace")
        axes[0].set_title(f"validation text, one token per step: {caption}", fontsize=9)
        axes[0].axis("off")
        axes[1].axis("off")
        return
    sequence = inputs[0].float().cpu()  # (T, F)
    if config.task == "seqimage":
        side = config.data.train_resolution
        axes[0].imshow(sequence.mean(-1).reshape(side, side), cmap="gray")
        axes[0].set_title(f"{caption}, read row by row; predicted {prediction}")
        axes[0].axis("off")
    else:
        axes[0].imshow(sequence.T, aspect="auto", cmap="Greys", interpolation="nearest")
        axes[0].set_title(f"{caption}: input features over time; predicted {prediction}")
        axes[0].set_ylabel("feature")
    axes[1].axis("off")


@torch.no_grad()
def plot_module_activity(run_dir: Path, config: Any, task: Any, model: Any) -> Path | None:
    """For one test sequence: which modules are active at each step of each layer, and how the
    input attention splits between the null, bottom-up and top-down slots."""
    if not model.core.is_modular:
        return None
    inputs, caption = task.activity_input()  # (1, T, F)
    device = next(model.parameters()).device
    result = model(inputs.to(device), return_diagnostics=True)
    output, diagnostics = result[0], result[-1]  # a language model also returns its state
    if config.task in ("lm", "video"):
        prediction = ""
    elif config.task == "adding":
        prediction = f"{float(output.flatten()[0]):.2f}"
    elif output.dim() == 3:
        prediction = "".join(str(int(t)) for t in output[0].argmax(-1)[-config.data.copy_length :])
    else:
        prediction = str(int(output.argmax(-1)[0]))
    layers = len(diagnostics.active)
    header = {"lm": 0.6, "video": 0.5}.get(config.task, 1.0)  # a row of upright tokens, one row of frames
    figure, axes = plt.subplots(layers + 1, 2, figsize=(12, 2.2 * (layers + header)), squeeze=False,
                                gridspec_kw={"width_ratios": [3, 2], "height_ratios": [header] + [1] * layers})
    _draw_input(axes[0], config, task, inputs, caption, prediction)
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


def plot_run(run_dir: Path, config: Any, task: Any, model: Any, metrics: dict[str, Any]) -> list[Path]:
    title = title_of(metrics)
    if config.task == "video":
        from brims_experiments.train.video_plots import plot_video_run

        summary = plot_video_run(run_dir, config, task, model, metrics, title)
    else:
        summary = [plot_test_summary([metrics], run_dir / SUMMARIES[config.task][-1], title)]
    made = [plot_learning_curves(run_dir, title, LEARNING_METRIC[config.task]), *summary,
            plot_module_activity(run_dir, config, task, model)]
    return [path for path in made if path is not None]
