"""Video prediction: the bouncing-balls physics and Moving MNIST generators, the encoder → core
→ decoder model with its closed-loop rollout and curtain, config errors, and a tiny
``brims train`` run (with a resume after ``kill -9``) through the command line."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.cli import main
from brims_experiments.config_files import ConfigError
from brims_experiments.data.bouncing_balls import BallsConfig, draw_balls, render, sample_start, simulate
from brims_experiments.data.images import ImageSplit, save_image_dataset
from brims_experiments.data.moving_mnist import MovingDigitsConfig, draw_moving_digits
from brims_experiments.tasks.cores import CORE_KINDS, MODULAR_KINDS, CoreConfig
from brims_experiments.tasks.video import VideoPredictor, hide
from brims_experiments.train.config import load_config
from brims_experiments.train.datamodule import BatchedExamples, IndexedExamples
from brims_experiments.train.tasks import make_task

TINY_CORE = {
    "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
    "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4,
}


def generators(count: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def starts(config: BallsConfig, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    drawn = [sample_start(config, g) for g in generators(count)]
    return torch.stack([p for p, _ in drawn]), torch.stack([v for _, v in drawn])  # (N, K, 2) each


# ---- bouncing balls ---------------------------------------------------------------------------------


def test_kinetic_energy_is_kept_through_every_collision():
    config = BallsConfig(frame_size=24, frames=100, balls=8, radius=2.5, speed=2.0)  # crowded: many collisions
    _positions, velocities = simulate(config, *starts(config, 16))  # (N, T, K, 2)
    energy = (velocities**2).sum((-1, -2))  # (N, T)
    assert torch.allclose(energy, energy[:, :1].expand_as(energy), rtol=1e-12, atol=0)
    speeds_changed = (velocities[:, 1:] - velocities[:, :-1]).norm(dim=-1) > 1e-9  # (N, T-1, K)
    assert speeds_changed.sum() > 100  # the balls did bounce (off walls and each other)


def test_ball_collision_keeps_momentum_and_energy():
    """Two balls meet off-centre in the middle of a large frame, far from every wall."""
    config = BallsConfig(frame_size=100, frames=12, balls=2, radius=4.0, speed=2.0)
    position = torch.tensor([[[40.0, 50.0], [60.0, 53.0]]], dtype=torch.float64)  # (1, 2, 2)
    velocity = torch.tensor([[[1.5, 0.0], [-1.0, 0.2]]], dtype=torch.float64)
    positions, velocities = simulate(config, position, velocity)
    momentum = velocities.sum(2)  # (1, T, 2)
    assert torch.allclose(momentum, velocity.sum(1, keepdim=True).expand_as(momentum), rtol=0, atol=1e-12)
    energy = (velocities**2).sum((-1, -2))
    assert torch.allclose(energy, energy[:, :1].expand_as(energy), rtol=1e-12, atol=0)
    assert not torch.allclose(velocities[0, -1], velocity[0])  # they did collide
    assert (positions[0, -1, 0, 0] < 50) and (positions[0, -1, 1, 0] > 50)  # and bounced apart
    assert ((positions - 50).abs() < 30).all()  # never near a wall


def test_balls_stay_inside_the_frame_and_do_not_start_overlapping():
    config = BallsConfig(frame_size=16, frames=80, balls=4, radius=2.0, speed=3.0)  # fast: 3 substeps a frame
    position, velocity = starts(config, 32)
    gaps = (position[:, :, None] - position[:, None]).norm(dim=-1) + 1e9 * torch.eye(4)  # (N, K, K)
    assert (gaps >= 2 * config.radius).all()
    positions, _ = simulate(config, position, velocity)
    assert (positions >= config.radius).all() and (positions <= config.frame_size - config.radius).all()
    frames = render(positions, config.frame_size, config.radius)  # (N, T, S, S)
    assert frames.shape == (32, 80, 16, 16) and frames.min() >= 0 and frames.max() <= 1
    assert (frames.flatten(2).max(-1).values == 1).all()  # every ball's centre pixel is lit


def test_a_ball_renders_as_a_disc_of_its_radius():
    frames = render(torch.tensor([[[[10.0, 10.0]]]]), 20, 3.0)[0, 0]  # (S, S): centred on a pixel corner
    assert frames.sum().item() == pytest.approx(torch.pi * 3.0**2, rel=0.02)  # the edge ramps over r -+ 1/2
    assert frames[9, 9] == 1 and frames[0, 0] == 0


def test_balls_are_deterministic_and_each_sequence_is_its_own_seeds():
    config = BallsConfig(frame_size=16, frames=10, balls=3, radius=2.0, speed=1.5)
    together = draw_balls(config, generators(5))
    assert torch.equal(together, draw_balls(config, generators(5)))
    alone = torch.cat([draw_balls(config, [g]) for g in generators(5)])
    assert torch.equal(together, alone)  # drawn in one batch or one by one: the same sequences
    assert not torch.equal(together, draw_balls(config, generators(5, offset=5)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"balls": 0}, "balls must be an integer"),
        ({"radius": 8.0}, "do not fit"),
        ({"balls": 20}, "crowd"),
        ({"speed": 0.0}, "speed"),
    ],
)
def test_ball_config_errors(options, message):
    with pytest.raises(ValueError, match=message):
        BallsConfig(**{"frame_size": 16, "frames": 5, "balls": 2, "radius": 2.0, **options})


# ---- Moving MNIST -----------------------------------------------------------------------------------


def test_moving_digits_stay_whole_inside_the_frame():
    config = MovingDigitsConfig(frame_size=16, frames=40, digits=1, digit_size=5, speed=3.0)
    frames = draw_moving_digits(config, torch.ones(1, 5, 5), generators(20))  # (N, T, S, S)
    assert (frames.sum((-1, -2)) == 25).all()  # the whole 5x5 digit is in every frame
    moved = (frames[:, 1:] != frames[:, :-1]).flatten(2).any(-1)  # (N, T-1)
    assert moved.float().mean() > 0.8


def test_moving_digits_use_the_given_digits_and_are_deterministic():
    digits = torch.stack([torch.full((4, 4), 0.25), torch.full((4, 4), 0.75)])  # (M, d, d)
    config = MovingDigitsConfig(frame_size=12, frames=6, digits=2, digit_size=4, speed=1.0)
    frames = draw_moving_digits(config, digits, generators(8))
    assert set(frames.unique().tolist()) <= {0.0, 0.25, 0.75}  # overlaps take the brighter pixel, never a sum
    assert torch.equal(frames, draw_moving_digits(config, digits, generators(8)))
    assert torch.equal(frames[3:4], draw_moving_digits(config, digits, generators(1, offset=3)))
    with pytest.raises(ValueError, match="room to move"):
        MovingDigitsConfig(frame_size=12, digit_size=12)
    with pytest.raises(ValueError, match=r"digits must be \(M, 4, 4\)"):
        draw_moving_digits(config, torch.ones(2, 5, 5), generators(1))


# ---- the model ---------------------------------------------------------------------------------------

SIZE, FRAMES, TEACHER = 16, 7, 3


def tiny_model(kind: str = "brims", frame_skip: bool = False, seed: int = 0) -> VideoPredictor:
    torch.manual_seed(seed)
    one_layer = {"hidden_sizes": [8], "num_modules": [2], "top_k": [1]} if kind == "rims" else {}
    core = CoreConfig(kind=kind, brims={**TINY_CORE, **one_layer, "attention_dropout": 0.0})
    return VideoPredictor(core, SIZE, TEACHER, embedding_size=8, channels=2, conv_layers=2,
                          frame_skip=frame_skip).eval()


def tiny_frames(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return draw_balls(BallsConfig(SIZE, FRAMES, 2, 2.0, 1.5), generators(batch, seed))  # (B, T, S, S)


@pytest.mark.parametrize("kind, frame_skip", [(kind, False) for kind in CORE_KINDS] + [("brims", True)])
def test_output_shapes_for_every_core(kind, frame_skip):
    model = tiny_model(kind, frame_skip)
    logits = model(tiny_frames())
    assert logits.shape == (3, FRAMES - 1, SIZE, SIZE)
    assert torch.isfinite(logits).all()
    if kind in MODULAR_KINDS:
        _, diagnostics = model(tiny_frames(), return_diagnostics=True)
        assert all(active.shape[0] == FRAMES - 1 for active in diagnostics.active)  # one entry per step


@pytest.mark.parametrize("frame_skip", [False, True])
def test_channels_last_convolutions_compute_what_contiguous_ones_do(frame_skip):
    """The predictor keeps its convolutions channels-last (for speed); the logits and every gradient
    equal those of the same weights laid out contiguously."""
    model = tiny_model("brims", frame_skip).train()
    convolutions = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convolutions and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    assert not all(m.weight.is_contiguous() for m in convolutions)  # not trivially both (a 1-channel weight is)
    contiguous = tiny_model("brims", frame_skip).train().to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in contiguous.modules() if isinstance(m, torch.nn.Conv2d))
    frames = tiny_frames()
    logits = [each(frames) for each in (model, contiguous)]  # (B, T-1, S, S) each; no dropout in tiny_model
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    for each in logits:
        each.square().mean().backward()
    for (name, ours), theirs in zip(model.named_parameters(), contiguous.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind, frame_skip", [("brims", False), ("lstm", False), ("lstm", True)])
def test_rollout_reads_only_the_teacher_forced_prefix(kind, frame_skip):
    model = tiny_model(kind, frame_skip)
    frames = tiny_frames()
    changed = frames.clone()
    changed[:, TEACHER:] = torch.rand_like(changed[:, TEACHER:])
    with torch.no_grad():
        assert torch.equal(model(frames), model(changed))
        changed[:, TEACHER - 1] = 1 - changed[:, TEACHER - 1]  # a prefix frame does matter
        assert not torch.allclose(model(frames), model(changed))


@pytest.mark.parametrize("curtain, frame_skip", [(None, False), ((5, 9), False), ((5, 9), True)])
def test_rollout_feeds_back_its_own_predictions(curtain, frame_skip):
    """A step-by-step reference: frame t+1 is predicted from sigmoid(prediction of frame t)."""
    model = tiny_model("brims", frame_skip)
    frames = tiny_frames()
    with torch.no_grad():
        logits = model(frames, curtain=curtain)  # (B, T-1, S, S)
        state, expected = None, []
        for t in range(FRAMES - 1):
            frame = frames[:, t] if t < TEACHER else torch.sigmoid(expected[-1])  # (B, S, S)
            seen = hide(frame, curtain)[None]  # (1, B, S, S)
            output, state, _ = model.core(model.encode(seen), state)
            expected.append(model.decode(output, seen)[0])
    torch.testing.assert_close(logits, torch.stack(expected, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frame_skip", [False, True])
def test_curtain_hides_its_band_from_the_input_only(frame_skip):
    model = tiny_model("brims", frame_skip)
    frames = tiny_frames()
    in_band = frames.clone()
    in_band[..., 5:9] = torch.rand_like(in_band[..., 5:9])
    with torch.no_grad():
        assert torch.equal(model(frames, curtain=(5, 9)), model(in_band, curtain=(5, 9)))
        assert not torch.allclose(model(frames), model(in_band))
    assert hide(frames, (5, 9))[..., 5:9].eq(0).all() and torch.equal(hide(frames, None), frames)
    # The test targets keep the band: the curtain condition is scored on whole frames.
    task = make_task(load_config(overrides=video_overrides()))
    _, targets = task.draw(4, 50, torch.Generator().manual_seed(0))
    band = slice(*task.config.data.curtain_columns)
    assert targets[..., band].sum() > 0


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_an_encoder_unit_that_no_frame_drives_learns_only_if_leaky(activation):
    # The unit's bias far below what any frame adds: ReLU gives 0 on every frame, and nothing
    # reaches its weights (a dead unit, as whole encoders died in bouncing-balls runs at lr 3e-3).
    torch.manual_seed(0)
    core = CoreConfig(kind="lstm", brims={"hidden_sizes": [8]})
    model = VideoPredictor(core, SIZE, TEACHER, embedding_size=8, channels=2, conv_layers=2, activation=activation)
    first = model.encoder[0]
    with torch.no_grad():
        first.bias[0] = -100.0
    model(tiny_frames()).sum().backward()
    reached = first.weight.grad[0].abs().sum()
    assert (reached > 0) == (activation == "leaky_relu")
    with pytest.raises(ValueError, match="activation must be one of relu, leaky_relu, got 'tanh'"):
        VideoPredictor(core, SIZE, TEACHER, 8, 2, 2, activation="tanh")


def test_model_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"frames must be \(B, T, 16, 16\)"):
        model(torch.zeros(2, FRAMES, 32, 32))
    with pytest.raises(ValueError, match="nothing to roll out"):
        model(torch.zeros(2, TEACHER, SIZE, SIZE))
    with pytest.raises(ValueError, match="multiple of 4"):
        VideoPredictor(CoreConfig(kind="lstm", brims={"hidden_sizes": (8, 8)}), 18, 2, 8, 2, 2)


# ---- configs, data module ---------------------------------------------------------------------------


def video_overrides(*extra: str) -> list[str]:
    return ["task=video", "data.frame_size=16", "data.frames=8", "data.teacher_frames=3", "data.radius=2.0",
            "data.test_objects=[5]", "model.conv_layers=2", *extra]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.frame_size=18", r"data\.frame_size: frames of 18x18 pixels do not fit the encoder"),
        ("data.objects=0", r"data\.objects must be an integer >= 1"),
        ("data.test_objects=[0]", r"data\.test_objects\[\]"),
        ("data.radius=9.0", "do not fit in 16x16 frames"),
        ("data.test_objects=[40]", "40 balls of radius 2 crowd"),
        ("data.teacher_frames=7", r"data\.teacher_frames=7 leaves no closed-loop rollout"),
        ("data.curtain=[0.6,0.4]", r"data\.curtain must be"),
        ("data.curtain=[0.5,0.52]", "hides no whole column"),
        ("data.dataset=pong", r"data\.dataset must be one of"),
        ("data.digit_size=10", r"data\.digit_size applies to dataset mnist only"),
        ("data.speed=0", r"data\.speed"),
        ("model.conv_activation=gelu", r"model\.conv_activation must be one of relu, leaky_relu, got 'gelu'"),
    ],
)
def test_video_config_errors_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=video_overrides(override))


@pytest.mark.parametrize("override", ["model.conv_layers=2", "model.frame_skip=true", "model.conv_activation=leaky_relu"])
def test_conv_options_belong_to_the_video_task(override):
    with pytest.raises(ConfigError, match="apply to task video only"):
        load_config(overrides=["task=adding", override])


def test_batched_examples_equal_the_examples_one_by_one():
    task = make_task(load_config(overrides=video_overrides()))
    draw_each = task.draw_each(4, "train")
    batched = BatchedExamples(draw_each, seed=3)
    single = IndexedExamples(lambda count, g: draw_each([g] * count), seed=3)
    for (inputs, targets), index in zip(batched.__getitems__([7, 8, 20]), [7, 8, 20]):
        one_inputs, one_targets = single[index]
        assert torch.equal(inputs, one_inputs) and torch.equal(targets, one_targets)
        assert torch.equal(targets, inputs[1:]) and inputs.shape == (8, 16, 16)


# ---- brims train, end to end ------------------------------------------------------------------------


def run_config(tmp_path: Path, dataset: str, **data) -> Path:
    config = {
        "task": "video",
        "data": {"dataset": dataset, "frame_size": 16, "frames": 6, "teacher_frames": 2, "objects": 2,
                 "test_objects": [3], "train_sequences": 48, "validation_sequences": 16, "test_sequences": 20,
                 "batch_size": 8, "eval_batch_size": 16, **data},  # 20 test sequences in 16s: a short last batch
        "model": {"embedding_size": 8, "conv_channels": 2, "conv_layers": 2, "frame_skip": True, "core": {"kind": "brims", "brims": TINY_CORE}},
        "train": {"epochs": 1, "lr": 0.01, "checkpoint_every": 1, "accelerator": "cpu", "devices": 1, "threads": 1},
    }
    path = tmp_path / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load_script(name: str):
    """A module of scripts/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def balls_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video")
    run_dir = folder / "run"
    config = run_config(folder, "balls", radius=2.0)
    assert main(["train", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
    return run_dir


def test_balls_run_writes_metrics_and_figures(balls_run, tmp_path, capsys):
    metrics = json.loads((balls_run / "metrics.json").read_text())
    assert metrics["task"] == "video" and metrics["dataset"] == "balls" and metrics["global_step"] == 48 // 8
    assert list(metrics["condition"]) == ["2 balls", "3 balls", "2 balls, curtain"]
    for result in metrics["condition"].values():
        assert result["sequences"] == 20 and len(result["bce_per_step"]) == 5
        assert result["rollout_bce"] == pytest.approx(sum(result["bce_per_step"][2:]) / 3, rel=1e-4)
        assert 0 < result["constant_bce"] < 16 * 16 * 0.7
        assert result["rollout_to_constant"] == pytest.approx(result["rollout_bce"] / result["constant_bce"])
    for name in ("learning_curves.png", "prediction_strip.png", "bce_by_frame.png", "module_activity.png"):
        assert (balls_run / name).read_bytes().startswith(b"\x89PNG"), name
    assert (balls_run / "rollout.gif").read_bytes().startswith(b"GIF89a")
    assert main(["compare", str(balls_run), str(balls_run), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "2 balls, curtain: rollout BCE" in out and (tmp_path / "c.png").is_file()


def test_encoder_health_tells_a_dead_encoder_from_a_live_one(balls_run, tmp_path):
    script = load_script("video_encoder_health")
    live = script.health(str(balls_run), sequences=8, frames=4)
    assert live["embedding_spread"] > 0 and 0 <= live["dead_units"] < 1
    checkpoint = read_checkpoint(balls_run / "checkpoints" / "best.ckpt")
    last_conv = max(int(key.split(".")[-2]) for key in checkpoint["state_dict"]
                    if ".encoder." in key and key.endswith(".bias") and checkpoint["state_dict"][key].dim() == 1
                    and checkpoint["state_dict"][key.replace(".bias", ".weight")].dim() == 4)
    for key, value in checkpoint["state_dict"].items():  # the last convolution: 0 weights, negative bias
        if f".encoder.{last_conv}." in key:
            value.copy_(torch.zeros_like(value) if key.endswith(".weight") else -torch.ones_like(value))
    dead = tmp_path / "dead.ckpt"
    torch.save(checkpoint, dead)
    found = script.health(str(dead), sequences=8, frames=4)
    assert found["dead_units"] == 1.0 and found["embedding_spread"] < 1e-6  # one embedding for every frame


def test_encoder_health_measures_the_gradient_the_core_passes_back(balls_run, tmp_path):
    script = load_script("video_encoder_health")
    assert script.health(str(balls_run), sequences=4, frames=4)["gradient_passed"] > 1e-4
    checkpoint = read_checkpoint(balls_run / "checkpoints" / "best.ckpt")
    for key, value in checkpoint["state_dict"].items():  # the first layer reads nothing from the frames
        if key.endswith("layers.0.input_attention.bottom_up.weight"):
            value.zero_()
    deaf = tmp_path / "deaf.ckpt"
    torch.save(checkpoint, deaf)
    assert script.health(str(deaf), sequences=4, frames=4)["gradient_passed"] == 0.0


def test_first_steps_probe_reports_every_layer_and_normalises_with_attended_norm(balls_run, capsys, monkeypatch):
    script = load_script("video_first_steps")
    for extra, normalised in (([], False), (["--attended-norm"], True), (["--no-attended-norm"], False)):
        monkeypatch.setattr(sys, "argv", ["video_first_steps.py", str(balls_run), "--steps", "2", "--every", "1", *extra])
        script.main()
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].endswith(f"attended_norm {normalised}")  # the built model's setting, not the flag
        rows = [line.strip("| ").split(" | ") for line in lines[2:]]
        assert [row[0] for row in rows] == ["0", "1", "2"]
        layers = [[float(cell.split(", ")[0]) for cell in row[2:-1]] for row in rows]  # mean |cell input| per layer
        assert all(len(sizes) == 2 for sizes in layers)  # TINY_CORE's two layers
        if normalised:  # normalised over each module's features: mean |x| of a unit-variance vector, below 1
            assert all(0.5 < size <= 1.0 for sizes in layers for size in sizes)
        assert all(float(row[-1]) > 0 for row in rows)  # the encoder gets a gradient


def test_video_probes_end_in_one_message_for_a_folder_that_is_not_a_balls_run(balls_run, tmp_path):
    first_steps, health = load_script("video_first_steps"), load_script("video_encoder_health")
    with pytest.raises(SystemExit, match="not a video run folder"):
        first_steps.build(str(tmp_path), None)
    with pytest.raises(SystemExit, match=str(tmp_path)):  # no checkpoint there: the loader's message
        health.health(str(tmp_path), sequences=2, frames=2)
    with pytest.raises(SystemExit, match="--frames 99: the run's sequences have 6 frames"):
        health.health(str(balls_run), sequences=2, frames=99)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "config.yaml").write_text((balls_run / "config.yaml").read_text())  # a config, no checkpoint
    with pytest.raises(SystemExit, match="unreadable"):
        health.health(str(unreadable), sequences=2, frames=2)
    assert first_steps.build(str(unreadable), True).config.model.core.option("attended_norm") is True


def test_video_run_resumes_after_kill_with_the_same_weights(balls_run, tmp_path):
    config = run_config(tmp_path, "balls", radius=2.0)
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "brims_experiments.cli", "train", str(config), "--run-dir", str(run_dir), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if last.is_file() and read_checkpoint(last)["global_step"] >= 2:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        process.wait()
    killed_at = read_checkpoint(last)["global_step"]
    assert 2 <= killed_at < 6 and not (run_dir / "metrics.json").exists()
    assert main(["train", str(run_dir), "--no-progress"]) == 0
    reference = read_checkpoint(balls_run / "checkpoints" / "last.ckpt")["state_dict"]
    resumed = read_checkpoint(last)["state_dict"]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_moving_mnist_run(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 28, 28, 1, generator=generator) * 255).to(torch.uint8)
    split = ImageSplit(images, torch.zeros(40, dtype=torch.int64))
    save_image_dataset("mnist", {"train": split, "test": split}, tmp_path / "data")
    config = run_config(tmp_path, "mnist", digit_size=6, curtain=[], train_sequences=16,
                        data_dir=str(tmp_path / "data"))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["condition"]) == ["2 digits", "3 digits"] and metrics["curtain_columns"] == []


def test_moving_mnist_without_data_fails_before_training(tmp_path, capsys):
    config = run_config(tmp_path, "mnist", digit_size=6, data_dir=str(tmp_path / "none"))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "brims fetch mnist" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
