"""The per-run figures, drawn from a small real run folder (a CSV log written by the run's own logger,
a metrics.json as the test writes it): errors on log axes, and learning curves whose two panels show
two different things."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import pytest

from brims_experiments.experiments import experiment
from brims_experiments.experiments import video as video_plots
from brims_experiments.train import plots
from brims_experiments.train.run import RunLog

TRAIN_STEPS = range(9, 1000, 10)
VAL_STEPS = range(99, 1000, 100)


def decaying(step: int) -> float:
    """A loss that falls from about 0.2 to about 1e-4, as the adding problem's does."""
    return 0.2 * math.exp(-step / 130) + 1e-4


def write_log(run_dir, train: dict, val: dict) -> None:
    """``logs/metrics.csv`` as a run writes it: ``train/*`` rows per logged step, ``val/*`` rows per validation."""
    log = RunLog(run_dir)
    for step in TRAIN_STEPS:
        log.log_metrics({"epoch": 0, **{f"train/{k}": f(step) for k, f in train.items()}}, step)
    for step in VAL_STEPS:
        log.log_metrics({"epoch": 0, **{f"val/{k}": f(step) for k, f in val.items()}}, step)
    log.save()


def ydata(axis) -> list[float]:
    (line,) = axis.get_lines()
    return [float(v) for v in line.get_ydata()]


@pytest.fixture
def adding_run(tmp_path):
    write_log(tmp_path, train={"loss": decaying, "mse": decaying},
              val={"loss": lambda s: decaying(s) * 1.1, "mse": lambda s: decaying(s) * 1.1})
    return tmp_path


def test_the_learning_curves_of_a_task_whose_metric_is_its_loss_are_two_different_panels(adding_run):
    """Adding logs mse == loss: the panels were "loss" and "mse", each train and val, the same picture."""
    figure = plots.learning_curves_figure(plots.read_log(adding_run), "t", experiment("adding").learning_metric)
    training, validation = figure.axes
    assert ydata(training) == pytest.approx([decaying(s) for s in TRAIN_STEPS])
    assert ydata(validation) == pytest.approx([1.1 * decaying(s) for s in VAL_STEPS])
    # Lightning logs step s (from 0) after s + 1 steps: the figures count steps trained, from 1.
    assert list(training.get_lines()[0].get_xdata()) == [s + 1 for s in TRAIN_STEPS]
    assert list(validation.get_lines()[0].get_xdata()) == [s + 1 for s in VAL_STEPS]
    assert "training" in training.get_ylabel() and "validation mean squared error" in validation.get_ylabel()
    assert (training.get_yscale(), validation.get_yscale()) == ("log", "log")
    assert all("log scale" in axis.get_ylabel() for axis in (training, validation))
    plt.close(figure)


def test_the_learning_curves_png_is_written(adding_run):
    path = plots.plot_learning_curves(adding_run, "t", "mse")
    assert path == adding_run / "learning_curves.png" and path.read_bytes()[:4] == b"\x89PNG"


def test_an_accuracy_is_drawn_linear_in_percent_beside_the_log_loss(tmp_path):
    write_log(tmp_path, train={"loss": decaying, "acc": lambda s: 0.5}, val={"loss": decaying, "acc": lambda s: 0.9})
    figure = plots.learning_curves_figure(plots.read_log(tmp_path), "t", experiment("seqimage").learning_metric)
    training, validation = figure.axes
    assert (training.get_yscale(), validation.get_yscale()) == ("log", "linear")
    assert ydata(validation) == pytest.approx([90.0] * len(VAL_STEPS))
    assert "accuracy" in validation.get_ylabel() and "%" in validation.get_ylabel()
    plt.close(figure)


def test_without_the_metric_the_validation_panel_draws_the_validation_loss(tmp_path):
    """A word-level language model logs no bpc: its second panel is the validation loss, not nothing."""
    write_log(tmp_path, train={"loss": lambda s: 6 - s / 500}, val={"loss": lambda s: 5.5 - s / 500})
    figure = plots.learning_curves_figure(plots.read_log(tmp_path), "t", experiment("lm").learning_metric)
    _, validation = figure.axes
    assert ydata(validation) == pytest.approx([5.5 - s / 500 for s in VAL_STEPS])
    assert "validation loss" in validation.get_ylabel()
    plt.close(figure)


def test_a_loss_that_reaches_zero_or_below_gets_a_symlog_axis_that_says_so(tmp_path):
    write_log(tmp_path, train={"loss": lambda s: 0.1 - s / 5000}, val={"loss": lambda s: 0.05})
    figure = plots.learning_curves_figure(plots.read_log(tmp_path), "t", "mse")
    training = figure.axes[0]
    assert min(ydata(training)) < 0
    assert training.get_yscale() == "symlog" and "symlog" in training.get_ylabel()
    plt.close(figure)


def adding_metrics() -> dict:
    """metrics.json of an adding run: MSEs far below the trivial predictor's."""
    length = {str(n): {"loss": mse, "mse": mse, "sequences": 100, "steps": n}
              for n, mse in ((50, 2.5e-3), (100, 9.3e-3), (200, 4.2e-2))}
    return {"task": "adding", "dataset": "adding", "model": "lstm", "length": length, "trivial_mse": 1 / 6}


def test_mse_by_length_is_drawn_on_a_log_axis(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(adding_metrics()))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    figure = plots.summary_figure([metrics], "t")
    (axis,) = figure.axes
    assert axis.get_yscale() == "log" and "log scale" in axis.get_ylabel()
    model_line = axis.get_lines()[0]
    assert list(model_line.get_ydata()) == [2.5e-3, 9.3e-3, 4.2e-2]
    plt.close(figure)
    path = plots.plot_test_summary([metrics], tmp_path / experiment("adding").summary_file, "t")
    assert path.name == "mse_by_length.png" and path.read_bytes()[:4] == b"\x89PNG"


def test_a_language_models_test_by_noise_is_drawn_on_a_log_axis():
    metrics = {"task": "lm", "dataset": "austen", "model": "lstm", "level": "word", "test": {"ppl": 180.0},
               "noise": {"0.05": {"ppl": 220.0}, "0.2": {"ppl": 400.0}}}
    figure = plots.summary_figure([metrics], "t")
    assert figure.axes[0].get_yscale() == "log"
    plt.close(figure)


def test_accuracies_by_resolution_or_gap_stay_linear():
    metrics = {"task": "copying", "dataset": "copying", "model": "lstm",
               "gap": {"25": {"sequence_acc": 0.05}, "100": {"sequence_acc": 0.03}}}
    figure = plots.summary_figure([metrics], "t")
    assert figure.axes[0].get_yscale() == "linear"
    plt.close(figure)


def test_the_video_error_per_frame_is_drawn_on_a_log_axis():
    run = {"model": "brims", "teacher_frames": 2,
           "condition": {"2 balls": {"bce_per_step": [50.0, 40.0, 60.0], "constant_bce": 75.0},
                         "4 balls": {"bce_per_step": [90.0, 80.0, 95.0], "constant_bce": 120.0}}}
    figure = video_plots.error_by_step_figure([run], "t")
    assert [axis.get_yscale() for axis in figure.axes] == ["log", "log"]
    assert "log scale" in figure.axes[0].get_ylabel()
    plt.close(figure)
