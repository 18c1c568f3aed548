"""Next-frame prediction (``task: video``) on generated videos, bouncing balls or Moving MNIST: a
teacher-forced prefix, then a closed-loop rollout, tested with more objects and behind a curtain.
Model: :mod:`brims_experiments.tasks.video`; data: :mod:`brims_experiments.data.bouncing_balls`,
:mod:`brims_experiments.data.moving_mnist`."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import matplotlib.pyplot as plt
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from tqdm.auto import tqdm

from brims_experiments.config_files import ConfigError, int_at_least, positive_int, require
from brims_experiments.data.bouncing_balls import BallsConfig
from brims_experiments.data.moving_mnist import MovingDigitsConfig
from brims_experiments.data.store import atomic_write
from brims_experiments.experiments.generated import TEST_SEED, GeneratedDataConfig
from brims_experiments.figures import save_figure
from brims_experiments.tasks.video import VideoPredictor, bce_per_frame, check_frame_size
from brims_experiments.train.config import ExperimentConfig, is_int, is_number, list_field
from brims_experiments.train.datamodule import DrawEach, GeneratedDataModule
from brims_experiments.train.plots import loss_axis
from brims_experiments.train.supervised import SupervisedExperiment
from brims_experiments.train.tasks import Batch, markdown_table

matplotlib.use("Agg")  # files only (pyplot picks its backend at the first figure, not at import)
log = logging.getLogger(__name__)


VIDEO_DATASETS = ("balls", "mnist")


@dataclass(frozen=True)
class VideoDataConfig(GeneratedDataConfig):
    """Next-frame prediction on generated videos (:mod:`brims_experiments.tasks.video`).

    Attributes:
        dataset: ``balls`` (bouncing balls) or ``mnist`` (Moving MNIST from the fetched MNIST digits).
        frame_size: side of the square frames in pixels.
        frames: frames per sequence.
        teacher_frames: true frames the model reads before it feeds on its own predictions.
        objects: balls (or digits) per training sequence.
        test_objects: other counts the test evaluates (the training count is always tested).
        curtain: the band of columns hidden from the model's input in the curtain test, as
            fractions ``[start, stop)`` of the width; ``[]`` for no curtain test.
        speed: the largest speed in pixels per frame.
        radius: balls only: ball radius in pixels.
        digit_size: mnist only: side the 28x28 digits are resized to.
    """

    dataset: str = "balls"
    frame_size: int = 64
    frames: int = 51
    teacher_frames: int = 10
    objects: int = 4
    test_objects: tuple[int, ...] = (6, 8)
    curtain: tuple[float, ...] = (0.375, 0.625)
    speed: float = 2.0
    radius: float = 5.0
    digit_size: int = 28
    data_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        list_field(self, "test_objects", is_int, "integers (objects per sequence)", "[6, 8]")
        list_field(self, "curtain", is_number, "two fractions [start, stop) of the width",
                   "[0.375, 0.625] (or [] for no curtain test)")
        require(self.dataset in VIDEO_DATASETS, f"data.dataset must be one of {VIDEO_DATASETS}, got {self.dataset!r}")
        positive_int("data.frame_size", self.frame_size)
        int_at_least("data.frames", self.frames, 3, " (a teacher-forced frame, a predicted one, a rolled-out one)")
        int_at_least("data.teacher_frames", self.teacher_frames, 1)
        require(self.teacher_frames <= self.frames - 2,
                f"data.teacher_frames={self.teacher_frames} leaves no closed-loop rollout in "
                f"data.frames={self.frames} frames (at most {self.frames - 2})")
        for name, count in [("data.objects", self.objects)] + [("data.test_objects[]", n) for n in self.test_objects]:
            positive_int(name, count)
        require(self.curtain == () or (len(self.curtain) == 2 and 0 <= self.curtain[0] < self.curtain[1] <= 1),
                f"data.curtain must be [] or [start, stop] with 0 <= start < stop <= 1, got {list(self.curtain)}")
        require(not self.curtain or self.curtain_columns[0] < self.curtain_columns[1],
                f"data.curtain={list(self.curtain)} hides no whole column of {self.frame_size}-pixel frames")
        require(is_number(self.speed) and self.speed > 0, f"data.speed must be a number > 0, got {self.speed!r}")
        require(is_number(self.radius) and self.radius > 0, f"data.radius must be a number > 0, got {self.radius!r}")
        defaults = VideoDataConfig.__dataclass_fields__
        other = "digit_size" if self.dataset == "balls" else "radius"
        require(getattr(self, other) == defaults[other].default,
                f"data.{other} applies to dataset {'mnist' if other == 'digit_size' else 'balls'} only, "
                f"not {self.dataset}")
        try:
            for count in self.all_objects:  # a start that cannot be drawn fails now, not mid-run
                self.generator_config(count)
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None

    @property
    def all_objects(self) -> tuple[int, ...]:
        return tuple(sorted({self.objects, *self.test_objects}))

    @property
    def curtain_columns(self) -> tuple[int, int]:
        """The hidden columns ``[start, stop)`` in pixels."""
        start, stop = self.curtain
        return round(start * self.frame_size), round(stop * self.frame_size)

    def generator_config(self, objects: int) -> BallsConfig | MovingDigitsConfig:
        """The generator's config for ``objects`` balls or digits per sequence."""
        if self.dataset == "balls":
            return BallsConfig(self.frame_size, self.frames, objects, float(self.radius), float(self.speed))
        return MovingDigitsConfig(self.frame_size, self.frames, objects, self.digit_size, float(self.speed))


@dataclass(frozen=True)
class VideoCondition:
    """A video test condition: objects per sequence, and whether the curtain hides its band."""

    objects: int
    curtain: bool

    def name(self, dataset: str) -> str:
        return f"{self.objects} {'balls' if dataset == 'balls' else 'digits'}" + (", curtain" if self.curtain else "")


class VideoTask(SupervisedExperiment):
    """Next-frame prediction on generated videos: a teacher-forced prefix, then a closed-loop
    rollout (:mod:`brims_experiments.tasks.video`). Reported per test condition: the binary cross-entropy
    per frame (nats, summed over its pixels) at every predicted frame, and its means over the
    teacher-forced and the rolled-out frames. Training and validation use the training count
    of objects and no curtain; the test adds more objects and the curtain.
    """

    name = "video"
    data_config = VideoDataConfig
    model_fields = ("conv_channels", "conv_layers", "frame_skip", "conv_activation")
    learning_metric = "rollout_bce"
    activity_header = 0.5  # one row of frames

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self._digits: dict[str, Tensor] = {}

    def digits(self, split: str) -> Tensor:
        """Moving MNIST's digits ``(M, d, d)``: the training split's for training and validation,
        the test split's for the test; read and verified once."""
        from brims_experiments.data.images import load_image_split
        from brims_experiments.data.moving_mnist import prepare_digits

        if split not in self._digits:
            images = load_image_split("mnist", split, self.config.data.data_dir).images
            self._digits[split] = prepare_digits(images, self.config.data.digit_size)
        return self._digits[split]

    def conditions(self) -> list[VideoCondition]:
        data = self.config.data
        return ([VideoCondition(n, False) for n in data.all_objects]
                + [VideoCondition(data.objects, True)] * bool(data.curtain))

    @staticmethod
    def seed_of(condition: VideoCondition) -> int:
        """The test set's seed: the same sequences with and without the curtain."""
        return TEST_SEED + condition.objects

    def draw_each(self, objects: int, split: str) -> DrawEach:
        """Sequence ``i`` from ``generators[i]``: ``(frames (N, T, S, S), targets (N, T-1, S, S))``."""
        from brims_experiments.data.bouncing_balls import draw_balls
        from brims_experiments.data.moving_mnist import draw_moving_digits

        generator_config = self.config.data.generator_config(objects)

        def draw(generators: list[torch.Generator]) -> Batch:
            if self.config.data.dataset == "balls":
                frames = draw_balls(generator_config, generators)
            else:
                frames = draw_moving_digits(generator_config, self.digits(split), generators)
            return frames, frames[:, 1:]

        return draw

    def draw(self, objects: int, count: int, generator: torch.Generator, split: str = "test") -> Batch:
        """``count`` sequences drawn one after another from ``generator``."""
        return self.draw_each(objects, split)([generator] * count)

    def build_model(self) -> nn.Module:
        data, model = self.config.data, self.config.model
        return VideoPredictor(model.core, data.frame_size, data.teacher_frames, model.embedding_size,
                              model.conv_channels, model.conv_layers, model.frame_skip, model.conv_activation)

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        frames, targets = batch
        per_frame = bce_per_frame(model(frames), targets)  # (B, T-1)
        rollout = per_frame[:, self.config.data.teacher_frames :]  # (B, T-1-k): fed on its own predictions
        loss = per_frame.mean() / self.config.data.frame_size**2  # per pixel: the same scale at any frame size
        return loss, {"bce": per_frame.detach().mean(), "rollout_bce": rollout.detach().mean()}

    def datamodule(self) -> L.LightningDataModule:
        draw_each = self.draw_each(self.config.data.objects, "train")
        return GeneratedDataModule(self.config.data, self.config.train.seed,
                                   lambda count, generator: draw_each([generator] * count), draw_each)

    def check_data(self) -> None:
        if self.config.data.dataset == "mnist":
            self.digits("train")
            self.digits("test")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        data = self.config.data
        model.eval()
        results = {}
        for condition in self.conditions():
            generator = torch.Generator().manual_seed(self.seed_of(condition))
            curtain = data.curtain_columns if condition.curtain else None
            totals = torch.zeros(data.frames - 1, dtype=torch.float64)  # (T-1,)
            intensity = 0.0  # sum of the rolled-out target pixels, for the constant baseline
            name = condition.name(data.dataset)
            for start in tqdm(range(0, data.test_sequences, data.eval_batch_size), desc=f"test {name}",
                              disable=not progress, leave=False):
                count = min(data.eval_batch_size, data.test_sequences - start)
                frames, targets = self.draw(condition.objects, count, generator)
                logits = model(frames.to(device), curtain=curtain)  # (b, T-1, S, S)
                totals += bce_per_frame(logits, targets.to(device)).sum(0).double().cpu()
                intensity += targets[:, data.teacher_frames :].double().sum().item()
            per_step = totals / data.test_sequences  # (T-1,)
            rollout = per_step[data.teacher_frames :]
            pixels = data.test_sequences * len(rollout) * data.frame_size**2
            mean = min(max(intensity / pixels, 1e-6), 1 - 1e-6)
            constant = -(mean * math.log(mean) + (1 - mean) * math.log(1 - mean)) * data.frame_size**2
            results[name] = {"objects": condition.objects, "curtain": condition.curtain,
                             "sequences": data.test_sequences, "bce": float(per_step.mean()),
                             "teacher_bce": float(per_step[: data.teacher_frames].mean()),
                             "rollout_bce": float(rollout.mean()), "constant_bce": constant,
                             # the rollout's error as a share of predicting every pixel at the mean intensity
                             "rollout_to_constant": float(rollout.mean()) / constant,
                             "bce_per_step": [round(float(v), 4) for v in per_step]}
            log.info("test %s: rollout BCE per frame %.2f", name, results[name]["rollout_bce"])
        return {"condition": results, "frames": data.frames, "teacher_frames": data.teacher_frames,
                "frame_size": data.frame_size, "curtain_columns": list(data.curtain_columns) if data.curtain else []}

    def activity_input(self) -> tuple[Tensor, str]:
        data = self.config.data
        condition = VideoCondition(data.objects, False)
        frames, _ = self.draw(data.objects, 1, torch.Generator().manual_seed(self.seed_of(condition)))
        return frames, f"test sequence 0 of {condition.name(data.dataset)}"

    def figures(self, run_dir: Path, model: nn.Module, metrics: dict[str, Any], title: str) -> list[Path]:
        """``prediction_strip.png``, ``bce_by_frame.png`` (:meth:`summary_figure`), ``rollout.gif``."""
        from brims_experiments.train.plots import plot_test_summary

        shown = test_predictions(self.config, self, model)
        return [
            plot_strip(run_dir / "prediction_strip.png", title, shown, self.config.data.teacher_frames),
            plot_test_summary([metrics], run_dir / "bce_by_frame.png", title),
            save_gif(run_dir / "rollout.gif", shown),
        ]

    def draw_activity_input(self, axes: Any, inputs: Tensor, caption: str, prediction: str) -> None:
        """The frames read, side by side (the later ones are the model's own)."""
        frames = inputs[0, : self.config.data.teacher_frames].float().cpu()  # (k, S, S)
        axes[0].imshow(torch.cat(list(frames), -1).numpy(), cmap="gray", interpolation="nearest")
        axes[0].set_title(f"{caption}: the {len(frames)} teacher-forced frames", fontsize=9)
        axes[0].axis("off")
        axes[1].axis("off")

    @classmethod
    def check_config(cls, config: ExperimentConfig) -> None:
        try:
            check_frame_size(config.data.frame_size, config.model.conv_layers)
        except ValueError as error:
            raise ConfigError(f"data.frame_size: {error}") from None

    @classmethod
    def fetched_data(cls, config: ExperimentConfig) -> tuple[str, str | None] | None:
        return ("mnist", config.data.data_dir) if config.data.dataset == "mnist" else None

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        return "Moving MNIST" if metrics.get("dataset") == "mnist" else "bouncing balls"

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        """Binary cross-entropy per frame (nats, summed over its pixels), averaged over the frames of
        the closed-loop rollout, per test condition; the teacher-forced frames' mean in brackets."""
        conditions = list(dict.fromkeys(name for run in runs for name in run["condition"]))
        header = ["run", "model", "params", "best val_loss"] + [f"{c}: rollout BCE (teacher-forced)"
                                                                for c in conditions]
        rows = []
        for i, run in enumerate(runs):
            best = run.get("val_loss")
            cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                     "-" if best is None else f"{best:.4f}"]
            for condition in conditions:
                result = run["condition"].get(condition)
                cells.append("-" if result is None else f"{result['rollout_bce']:.1f} ({result['teacher_bce']:.1f})")
            rows.append(cells)
        first = runs[0]
        constant = ", ".join(f"{c} {r['constant_bce']:.1f}" for c, r in first["condition"].items())
        note = (f"(BCE per {first['frame_size']}x{first['frame_size']} frame in nats; {first['teacher_frames']} "
                f"teacher-forced frames of {first['frames']}. Predicting every pixel as the mean intensity scores: "
                f"{constant})")
        return markdown_table(header, rows, [note])

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        return error_by_step_figure(runs, title)


# ---- figures: true against predicted frames, the error at every rolled-out frame, an animated GIF ----
# Dimension legend: T = frames, S = frame side.

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


EXPERIMENT = VideoTask
