"""What the figures say: titles in words, integer ticks, the noise results beside the resolutions,
and the lines a learning curve must clear."""

from __future__ import annotations

import pytest

from brims_experiments.figures import title_of
from brims_experiments.rl.config import EnvConfig
from brims_experiments.rl.envs import reference_returns
from brims_experiments.train import plots


@pytest.mark.parametrize(("metrics", "title"), [
    ({"task": "seqimage", "dataset": "mnist", "model": "brims-no-top-down"}, "BRIMs without top-down on sequential MNIST"),
    ({"task": "lm", "dataset": "austen", "model": "lstm"}, "LSTM on Jane Austen (words)"),
    ({"task": "video", "dataset": "mnist", "model": "rims"}, "RIMs on Moving MNIST"),
    ({"task": "video", "dataset": "balls", "model": "brims"}, "BRIMs on bouncing balls"),
    ({"task": "adding", "dataset": "adding", "model": "brims"}, "BRIMs on the adding problem"),
])
def test_titles_are_in_words(metrics, title):
    assert title_of(metrics) == title


def seqimage_metrics(label: str, accuracy: float) -> dict:
    resolution = {str(side): {"acc": accuracy, "images": 10} for side in (14, 16, 19, 24)}
    noise = {"gaussian-0.1": {"acc": accuracy / 2, "images": 10, "resolution": 14}}
    return {"task": "seqimage", "dataset": "mnist", "model": "brims", "label": label, "train_resolution": 14,
            "resolution": resolution, "noise": noise}


def test_the_resolution_figure_ticks_the_tested_sides_and_shows_the_noise(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure))
    plots.plot_test_summary([seqimage_metrics("a", 0.5), seqimage_metrics("b", 0.7)], tmp_path / "f.png", "t")
    (figure,) = figures
    resolution, noise = figure.axes
    assert list(resolution.get_xticks()) == [14, 16, 19, 24]
    assert [label.get_text() for label in noise.get_xticklabels()] == ["clean", "gaussian-0.1"]
    heights = sorted(round(bar.get_height(), 6) for bar in noise.patches)
    assert heights == [25.0, 35.0, 50.0, 70.0]  # percent: each run's clean and noisy accuracy


def test_reference_returns_of_cartpole_with_hidden_velocities():
    """Random play scores about 22 and the memoryless rule about 40: a policy that learned
    something clears the second line, one that remembers clears it by far."""
    first = reference_returns(EnvConfig(hide_velocity=True), episodes=50)
    assert first == reference_returns(EnvConfig(hide_velocity=True), episodes=50)  # seeded
    assert 15 < first["random actions"] < 30 < first["memoryless rule"] < 60


def test_no_reference_is_played_for_atari():
    assert reference_returns(EnvConfig(id="ALE/Pong-v5", hide_velocity=False)) == {}



def test_the_error_per_frame_figure_shows_the_constant_baseline(tmp_path, monkeypatch):
    from brims_experiments.experiments import video as video_plots

    figures = []
    monkeypatch.setattr(video_plots, "save_figure", lambda figure, path: figures.append(figure))
    run = {"model": "brims", "teacher_frames": 2,
           "condition": {"2 balls": {"bce_per_step": [5.0, 4.0, 6.0], "constant_bce": 7.5}}}
    video_plots.plot_error_by_step([run], tmp_path / "f.png", "t")
    (axis,) = figures[0].axes
    assert any(list(line.get_ydata()) == [7.5, 7.5] for line in axis.get_lines())


def test_the_rollout_gif_labels_its_columns(tmp_path):
    import torch
    from PIL import Image

    from brims_experiments.experiments import video as video_plots

    true, predicted = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    path = video_plots.save_gif(tmp_path / "r.gif", [("2 balls", None, true, predicted)])
    image = Image.open(path).convert("L")
    scale, header = video_plots.GIF_SCALE, video_plots.GIF_HEADER_PIXELS
    assert image.height == header + (8 + 2) * scale  # the frames and a separator under the header
    band = torch.tensor(list(image.crop((0, 0, image.width, header)).getdata())).view(header, image.width)
    side = 8 * scale
    assert band[:, :side].max() > 200 and band[:, side + 2 * scale :].max() > 200  # "true", "predicted" (GIF palette)


def test_the_activity_figure_draws_an_always_active_module_black(tmp_path, monkeypatch):
    """A layer whose only module is always active was drawn white: imshow scaled the constant."""
    from brims_experiments.train import plots as figures_module
    from brims_experiments.train.config import load_config
    from brims_experiments.train.tasks import make_task

    figures = []
    monkeypatch.setattr(figures_module, "save_figure", lambda figure, path: figures.append(figure))
    core = {"kind": "rims", "brims": {"hidden_sizes": [4], "num_modules": [1], "top_k": [1], "input_heads": 1,
                                      "input_key_size": 2, "comm_heads": 1, "comm_key_size": 2, "comm_value_size": 2}}
    config = load_config(base={"task": "adding", "data": {"train_length": 5, "test_lengths": [6]},
                               "model": {"embedding_size": 4, "core": core}})
    task = make_task(config)
    figures_module.plot_module_activity(tmp_path, task, task.build_model().eval())
    image = figures[0].axes[2].images[0]
    assert image.get_array().min() == 1  # the module is active at every step
    assert (image.norm.vmin, image.norm.vmax) == (0, 1)  # so it is drawn black
