"""PNG figures of a run: learning curves, accuracy by test resolution, and what the modules do.

The module figure is the paper's kind: for one test sequence, which modules are active at
each step (per layer), and how the input attention splits between the null, bottom-up and
top-down slots over time (averaged over heads and modules).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from brims.data.images import load_image_split  # noqa: E402
from brims.data.store import atomic_write  # noqa: E402
from brims.tasks.seqimage import make_sequences  # noqa: E402

log = logging.getLogger(__name__)
SLOT_NAMES = ("null", "bottom-up", "top-down")


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


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


def plot_learning_curves(run_dir: Path, title: str) -> Path | None:
    series = read_log(run_dir)
    if not series:
        return None
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, axis in (("loss", loss_axis), ("acc", acc_axis)):
        for stage, style in (("train", "-"), ("val", "o-")):
            points = series.get(f"{stage}/{key}")
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, style, label=stage, alpha=0.8 if stage == "train" else 1.0, markersize=3)
        axis.set_xlabel("step")
        axis.set_ylabel("cross-entropy" if key == "loss" else "accuracy")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    path = run_dir / "learning_curves.png"
    _save(figure, path)
    return path


def plot_accuracy_by_resolution(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One line per run's ``metrics.json``: test accuracy against test resolution."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for metrics in runs:
        sizes = sorted(int(s) for s in metrics["resolution"])
        accuracy = [100 * metrics["resolution"][str(s)]["acc"] for s in sizes]
        axis.plot(sizes, accuracy, "o-", label=metrics.get("label", metrics["model"]))
        axis.axvline(metrics["train_resolution"], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("test resolution (side in pixels; dotted: training)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)
    return path


@torch.no_grad()
def plot_module_activity(run_dir: Path, config: Any, model: Any, index: int = 0) -> Path | None:
    """Active modules and slot attention over one test sequence at the training resolution."""
    if not model.core.is_modular:
        return None
    data = config.data
    split = load_image_split(data.dataset, "test", data.data_dir)
    tokens = make_sequences(split.images[index : index + 1], data.train_resolution, data.binarized)  # (1, T, C)
    device = next(model.parameters()).device
    logits, diagnostics = model(tokens.to(device), return_diagnostics=True)
    layers = len(diagnostics.active)
    figure, axes = plt.subplots(layers + 1, 2, figsize=(12, 2.2 * (layers + 1)),
                                gridspec_kw={"width_ratios": [3, 2]}, squeeze=False)
    image = split.images[index].float() / 255  # (H, W, C)
    axes[0][0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    axes[0][0].set_title(f"test image {index}: label {int(split.labels[index])}, "
                         f"predicted {int(logits.argmax(-1))}")
    axes[0][0].axis("off")
    side = data.train_resolution
    seen = tokens[0].float().mean(-1).reshape(side, side)  # (S, S): the pixels read, one per step
    axes[0][1].imshow(seen, cmap="gray")
    axes[0][1].set_title(f"as read: {side}x{side}{', binarised' if data.binarized else ''}, row by row")
    axes[0][1].axis("off")
    for layer in range(layers):
        active = diagnostics.active[layer][:, 0].float().cpu()  # (T, n)
        attention = diagnostics.attention[layer][:, 0].float().cpu()  # (T, n, slots)
        row = axes[layer + 1]
        row[0].imshow(active.T, aspect="auto", cmap="Greys", interpolation="nearest")
        row[0].set_yticks(range(active.shape[1]))
        row[0].set_ylabel(f"layer {layer + 1}\nmodule")
        row[0].set_xlabel("step (pixel)")
        row[0].set_title(f"layer {layer + 1}: active modules (black)")
        per_slot = attention.mean(1)  # (T, slots)
        for slot in range(per_slot.shape[-1]):
            row[1].plot(per_slot[:, slot], label=SLOT_NAMES[slot], linewidth=1)
        row[1].set_ylim(0, 1)
        row[1].set_title(f"layer {layer + 1}: input attention by slot")
        row[1].legend(fontsize=7, loc="upper right")
        row[1].set_xlabel("step (pixel)")
    figure.tight_layout()
    path = run_dir / "module_activity.png"
    _save(figure, path)
    return path


def plot_run(run_dir: Path, config: Any, model: Any, metrics: dict[str, Any]) -> list[Path]:
    title = f"{config.model.core.kind} on sequential {config.data.dataset}"
    made = [
        plot_learning_curves(run_dir, title),
        plot_accuracy_by_resolution([metrics], run_dir / "accuracy_by_resolution.png", title),
        plot_module_activity(run_dir, config, model),
    ]
    return [path for path in made if path is not None]
