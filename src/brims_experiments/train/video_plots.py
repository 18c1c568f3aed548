"""Figures of a video-prediction run: true against predicted frames, the error at every
rolled-out frame, and an animated GIF of one test sequence.

Dimension legend: T = frames, S = frame side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch
from PIL import Image, ImageDraw

from brims_experiments.data.store import atomic_write
from brims_experiments.runs import save_figure

matplotlib.use("Agg")  # files only (pyplot picks its backend at the first figure, not at import)

STRIP_COLUMNS = 12  # frames shown per row of the strip
GIF_SCALE = 4  # pixels per frame pixel in the GIF
GIF_HEADER_PIXELS = 12  # the band above the frames that labels the columns
GIF_MS_PER_FRAME = 150


@torch.no_grad()
def test_predictions(config: Any, task: Any, model: Any) -> list[tuple[str, Any, torch.Tensor, torch.Tensor]]:
    """Per test condition: ``(name, curtain columns or None, true frames (T, S, S),
    predicted frames (T, S, S))``, the prediction of frame 0 being frame 0 itself (it is given)."""
    data = config.data
    device = next(model.parameters()).device
    model.eval()
    shown = []
    for condition in task.conditions():
        frames, _ = task.draw(condition.objects, 1, torch.Generator().manual_seed(task.seed_of(condition)))
        curtain = data.curtain_columns if condition.curtain else None
        predicted = torch.sigmoid(model(frames.to(device), curtain=curtain)).cpu()  # (1, T-1, S, S)
        shown.append((condition.name(data.dataset), curtain, frames[0], torch.cat([frames[:, :1], predicted], 1)[0]))
    return shown


def plot_strip(path: Path, title: str, shown: list[tuple[str, Any, torch.Tensor, torch.Tensor]],
               teacher_frames: int) -> Path:
    """Per condition two rows: the true frames and the model's, every few frames; the first
    predicted frame of the closed-loop rollout is marked, the curtain's band outlined."""
    steps = shown[0][2].shape[0]
    columns = list(range(1, steps, max(1, -(-(steps - 1) // STRIP_COLUMNS))))
    figure, axes = plt.subplots(2 * len(shown), len(columns), figsize=(1.1 * len(columns), 2.4 * len(shown)),
                                squeeze=False)
    for block, (name, curtain, true, predicted) in enumerate(shown):
        for row, (label, frames) in enumerate((("true", true), ("predicted", predicted))):
            for column, frame in enumerate(columns):
                axis = axes[2 * block + row, column]
                axis.imshow(frames[frame].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                if curtain is not None:
                    for x in curtain:
                        axis.axvline(x - 0.5, color="tab:red", linewidth=0.8)
                if row == 0:
                    closed = frame > teacher_frames  # predicted from at least one predicted frame
                    axis.set_title(f"{frame}" + ("*" if closed else ""), fontsize=7)
            axes[2 * block + row, 0].set_ylabel(f"{name}\n{label}", fontsize=7)
    figure.suptitle(f"{title}: frame index (* closed-loop rollout; red: curtain)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def plot_error_by_step(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """:func:`error_by_step_figure` saved at ``path``."""
    save_figure(error_by_step_figure(runs, title), path)
    return path


def error_by_step_figure(runs: Sequence[dict[str, Any]], title: str) -> Any:
    """One panel per test condition: BCE per frame at every predicted frame, one line per run, on a
    log axis (shared by the panels); dotted: the last teacher-forced prediction; dashed: the constant
    baseline (every pixel at the rolled-out frames' mean intensity)."""
    from brims_experiments.train.plots import loss_axis

    names = list(dict.fromkeys(name for run in runs for name in run["condition"]))
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False, sharey=True)
    drawn: list[float] = []
    for axis, name in zip(axes[0], names):
        for run in runs:
            result = run["condition"].get(name)
            if result is None:
                continue
            values = result["bce_per_step"]
            drawn += values
            axis.plot(range(1, len(values) + 1), values, label=run.get("label", run["model"]), linewidth=1.2)
        axis.axvline(runs[0]["teacher_frames"], color="grey", linestyle=":", linewidth=1)
        constant = next((run["condition"][name].get("constant_bce") for run in runs if name in run["condition"]), None)
        if constant is not None:  # every pixel predicted as the mean intensity: what a model must beat
            axis.axhline(constant, color="grey", linestyle="--", linewidth=1, label="constant (mean intensity)")
            drawn.append(constant)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("predicted frame")
        axis.grid(alpha=0.3)
    loss_axis(axes[0, 0], drawn, "BCE per frame (nats)")  # the panels share the y axis, and so its scale
    axes[0, -1].legend(fontsize=7)
    figure.suptitle(f"{title}: error per frame (right of the dotted line: closed-loop rollout)", fontsize=9)
    figure.tight_layout()
    return figure


def save_gif(path: Path, shown: list[tuple[str, Any, torch.Tensor, torch.Tensor]]) -> Path:
    """An animated GIF: per condition, the true frames (left) beside the predicted ones (right),
    under a header that labels the two columns."""
    rows = []
    for _, _, true, predicted in shown:
        gap = torch.full((true.shape[0], true.shape[1], 2), 0.5)  # (T, S, 2): a grey separator
        rows.append(torch.cat([true, gap, predicted, gap], -1))  # (T, S, 2S+4)
    video = torch.cat([torch.cat([row, torch.full_like(row[:, :2], 0.5)], 1) for row in rows], 1)  # (T, H, W)
    pixels = (video.clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(GIF_SCALE, 1).repeat_interleave(GIF_SCALE, 2).numpy()
    side = shown[0][2].shape[-1] * GIF_SCALE  # one column's width in the GIF
    images = [_with_header(Image.fromarray(frame), side) for frame in pixels]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=GIF_MS_PER_FRAME, loop=0)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return path


def _with_header(frame: Image.Image, side: int) -> Image.Image:
    """``frame`` under a black band that names its columns: true (left), predicted (right)."""
    header = GIF_HEADER_PIXELS
    canvas = Image.new("L", (frame.width, frame.height + header), 0)
    canvas.paste(frame, (0, header))
    draw = ImageDraw.Draw(canvas)
    for label, left in (("true", 0), ("predicted", side + 2 * GIF_SCALE)):
        draw.text((left + 2, 1), label, fill=255)
    return canvas


def plot_video_run(run_dir: Path, config: Any, task: Any, model: Any, metrics: dict[str, Any],
                   title: str) -> list[Path]:
    """The run's video figures: ``prediction_strip.png``, ``bce_by_frame.png``, ``rollout.gif``."""
    shown = test_predictions(config, task, model)
    return [
        plot_strip(run_dir / "prediction_strip.png", title, shown, config.data.teacher_frames),
        plot_error_by_step([metrics], run_dir / "bce_by_frame.png", title),
        save_gif(run_dir / "rollout.gif", shown),
    ]
