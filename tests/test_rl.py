"""Reinforcement learning: environments and their checks, the recurrent actor-critic, PPO's
pieces, ``brims train | test | compare`` on RL runs, resuming after ``kill -9``, and the quick
check (hidden-velocity CartPole learns beyond what a memoryless policy can reach)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.cli import main
from brims_experiments.config_files import ConfigError
from brims_experiments.rl.agent import RecurrentActorCritic
from brims_experiments.rl.config import EnvConfig, load_rl_config
from brims_experiments.rl.envs import EnvError, check_spaces, env_spaces, make_env
from brims_experiments.rl.ppo import gae
from brims_experiments.rl.run import train
from brims_experiments.tasks.cores import CORE_KINDS
from brims_experiments.train.commands import resolve_config

PRESETS = ("rl-cartpole-cpu", "rl-minigrid-memory-cpu", "rl-pong-cpu")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_CORE = {"hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
             "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4}


def tiny_core(kind: str) -> dict:
    """The tiny core of each kind as a config section (RIMs: one layer)."""
    one_layer = {"hidden_sizes": [16], "num_modules": [2], "top_k": [1]} if kind == "rims" else {}
    return {"kind": kind, "brims": {**TINY_CORE, **one_layer}}


def tiny_config(env: dict | None = None, ppo: dict | None = None, train: dict | None = None, kind: str = "brims") -> dict:
    return {
        "task": "rl",
        "env": {"id": "CartPole-v1", "hide_velocity": True, "num_envs": 2, **(env or {})},
        "model": {"encoder_size": 8, "core": tiny_core(kind)},
        "ppo": {"total_steps": 256, "rollout_steps": 32, "chunk_length": 8, "epochs": 2, "minibatches": 2,
                **(ppo or {})},
        "train": {"threads": 1, "checkpoint_every": 1, "eval_episodes": 3, **(train or {})},
    }


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def brims(*argv: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(list(argv))
    finally:
        torch.set_num_threads(threads)


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "brims_experiments.cli", *argv]


# ---- configs and environments -----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    config = load_rl_config(resolve_config(preset))
    assert config.task == "rl" and config.total_updates >= 1


def test_rl_rates_in_scientific_notation():
    config = load_rl_config(base=tiny_config(), overrides=["ppo.lr=3e-4", "ppo.entropy_coef=1e-2"])
    assert (config.ppo.lr, config.ppo.entropy_coef) == (3e-4, 0.01)


@pytest.mark.parametrize("override, field", [
    ("env.hide_velocity=true env.id=Acrobot-v1", "env.hide_velocity"),
    ("ppo.chunk_length=48", "ppo.rollout_steps"),
    ("ppo.minibatches=7", "ppo.minibatches"),
    ("model.core.brims.attention_dropout=0.1", "model.core.brims.attention_dropout"),
    ("train.device=tpu", "train.device"),
    ("ppo.gamma=1.5", "ppo.gamma"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_rl_config(resolve_config("rl-cartpole-cpu"), override.split())


def test_hidden_velocity_keeps_position_and_angle():
    env = make_env(EnvConfig(hide_velocity=True))
    full = gym.make("CartPole-v1")
    observation, _ = env.reset(seed=3)
    reference, _ = full.reset(seed=3)
    assert env.observation_space.shape == (2,)
    np.testing.assert_array_equal(observation, reference[[0, 2]])


def test_minigrid_and_atari_observations():
    view = make_env(EnvConfig(id="MiniGrid-MemoryS7-v0"))
    observation, _ = view.reset(seed=0)
    assert observation.shape == (7, 7, 3) and observation.dtype == np.float32 and 0 <= observation.min() <= 1
    atari = make_env(EnvConfig(id="ALE/Pong-v5"))
    frame, _ = atari.reset(seed=0)
    assert frame.shape == (105, 80) and frame.dtype == np.uint8  # one pooled grayscale frame, no stack
    view.close()
    atari.close()


def test_unknown_environment_is_refused_with_suggestions():
    with pytest.raises(EnvError, match="not a registered.*CartPole-v1"):
        env_spaces(EnvConfig(id="CartPole-v9"))


@pytest.mark.parametrize("env_id, message", [
    ("Pendulum-v1", "discrete actions"),  # continuous actions
    ("FrozenLake-v1", "Box observations"),  # a discrete observation
    ("Blackjack-v1", "Box observations"),  # a tuple observation
])
def test_unsupported_spaces_are_refused(env_id, message):
    env = gym.make(env_id)
    with pytest.raises(EnvError, match=message):
        check_spaces(env_id, env.observation_space, env.action_space)


@pytest.mark.parametrize("override, message", [
    ("env.id=NoSuchEnv-v0", "not a registered gymnasium environment"),
    ("env.id=Pendulum-v1", "discrete actions"),
])
def test_cli_refuses_bad_environments_before_training(tmp_path, capsys, override, message):
    config = write(tmp_path / "c.yaml", tiny_config())
    assert brims("train", str(config), "--set", override, "env.hide_velocity=false", "--run-dir", str(tmp_path / "run"),
                 "--no-progress") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- the agent and PPO's pieces ------------------------------------------------------------------


@pytest.mark.parametrize("kind", CORE_KINDS)
@pytest.mark.parametrize("image", [False, True])
def test_sequence_equals_steps_with_resets(kind, image):
    """The update re-runs chunks as sequences; they must equal the rollout's step-by-step run,
    including state resets at episode starts inside the chunk."""
    torch.manual_seed(0)
    config = load_rl_config(base={"model": {"encoder_size": 8, "core": tiny_core(kind)}}).model
    env = make_env(EnvConfig(id="MiniGrid-MemoryS7-v0") if image else EnvConfig(hide_velocity=True))
    spaces = check_spaces("test", env.observation_space, env.action_space)
    agent = RecurrentActorCritic(spaces, config).eval()
    steps, batch = 9, 3
    obs = torch.rand(steps, batch, *spaces.observation_shape)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0, 1] = starts[3, 0] = starts[3, 2] = starts[7, 1] = True
    state0 = torch.randn(batch, agent.state_size) * 0.1
    with torch.no_grad():
        logits, values, final = agent(obs, state0, starts)
        state = state0
        for t in range(steps):
            step_logits, step_value, state = agent.step(obs[t], state, starts[t])
            torch.testing.assert_close(step_logits, logits[t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(step_value, values[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state, final)
        # A reset row forgets its past: the same as starting from zeros.
        fresh, _, _ = agent(obs[3:], torch.zeros_like(state0), starts[3:])
        after_reset, _, _ = agent(obs, state0, starts)
        torch.testing.assert_close(after_reset[3:, 0], fresh[:, 0])


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[False], [True], [False]])
    last = torch.tensor([0.2])
    gamma, lam = 0.9, 0.8
    d2 = 1 + gamma * 0.2 - 0.3
    d1 = 1 - 0.4  # the episode ended at step 1: no bootstrap across it
    d0 = 1 + gamma * 0.4 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    torch.testing.assert_close(gae(rewards, values, dones, last, gamma, lam), expected)


# ---- brims train | test | compare ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Tiny BRIMs and LSTM runs on hidden-velocity CartPole through the command line."""
    root = tmp_path_factory.mktemp("rl")
    runs = {}
    for kind in ("brims", "lstm"):
        config = write(root / f"{kind}.yaml", tiny_config(kind=kind))
        assert brims("train", str(config), "--run-dir", str(root / kind), "--no-progress") == 0
        runs[kind] = root / kind
    return runs


def test_rl_run_with_the_tensorboard_logger(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write(tmp_path / "tb.yaml", tiny_config(train={"logger": "tensorboard"}))
    assert brims("train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress") == 0
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "tensorboard"))
    events.Reload()
    assert {"episodes", "seconds"} <= set(events.Tags()["scalars"])
    steps = [event.step for event in events.Scalars("seconds")]
    assert steps == sorted(steps) and steps[-1] == 256  # by environment step, up to the budget


def test_a_finished_rl_run_can_be_extended(smoke_runs, tmp_path, capsys):
    run = shutil.copytree(smoke_runs["lstm"], tmp_path / "longer")
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")["update"]
    assert brims("train", str(run), "--no-progress", "--set", "ppo.total_steps=512") == 0
    assert "changed for this resume: ppo.total_steps: 256 -> 512" in capsys.readouterr().out
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["update"] == 2 * before
    assert brims("train", str(run), "--no-progress", "--set", "ppo.lr=0.5") == 2
    assert "ppo.lr would change the run itself" in capsys.readouterr().err


def test_smoke_run_writes_the_run_folder(smoke_runs):
    run = smoke_runs["brims"]
    for name in ("config.yaml", "checkpoints/last.ckpt", "logs/metrics.csv", "metrics.json", "train_time.json"):
        assert (run / name).is_file(), name
    assert (run / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "rl" and metrics["env_steps"] == 256 and metrics["test_episodes"] == 3
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("update,steps,episodes,mean_return")


def test_load_run_gives_the_trained_agent(smoke_runs):
    from brims_experiments import load_run

    run = load_run(smoke_runs["brims"])
    assert run.config.task == "rl" and run.core is run.model.core.network and not run.model.training


def test_test_and_compare_commands(smoke_runs, capsys, tmp_path):
    assert brims("test", str(smoke_runs["lstm"]), "--episodes", "2", "--no-progress") == 0
    assert "| lstm | CartPole-v1 (velocity hidden) | lstm |" in capsys.readouterr().out
    checkpoint = smoke_runs["lstm"] / "checkpoints" / "last.ckpt"
    assert brims("test", str(checkpoint), "--episodes", "1", "--no-progress") == 0  # a .ckpt file also works
    assert "| lstm |" in capsys.readouterr().out
    plot = tmp_path / "curves.png"
    assert brims("compare", str(smoke_runs["brims"]), str(smoke_runs["lstm"]), "--plot", str(plot)) == 0
    out = capsys.readouterr().out
    assert "train return (last 100 ep.)" in out and out.count("CartPole-v1") == 2
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_compare_of_a_run_without_its_log_or_with_foreign_metrics_is_one_message(smoke_runs, capsys, tmp_path):
    import shutil

    no_log = tmp_path / "no-log"
    shutil.copytree(smoke_runs["lstm"], no_log, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(no_log / "logs")
    assert brims("compare", str(smoke_runs["brims"]), str(no_log), "--plot", str(tmp_path / "c.png")) == 2
    assert f"{no_log} has no logs/metrics.csv" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        brims("compare", str(smoke_runs["brims"]), str(foreign))
    assert exit_info.value.code == 2
    assert "not the test metrics of a run" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_finished_run_is_not_retrained(smoke_runs, capsys):
    before = (smoke_runs["brims"] / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert brims("train", str(smoke_runs["brims"]), "--no-progress") == 0
    assert (smoke_runs["brims"] / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_checkpoint_from_another_environment_is_refused(smoke_runs, tmp_path, capsys):
    """A MiniGrid run folder holding a CartPole checkpoint: refused before any training."""
    config = write(tmp_path / "grid.yaml", tiny_config(env={"id": "MiniGrid-MemoryS7-v0", "hide_velocity": False}))
    run = tmp_path / "grid"
    run.mkdir()
    shutil.copy(config, run / "config.yaml")
    (run / "checkpoints").mkdir()
    shutil.copy(smoke_runs["brims"] / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert brims("train", str(run), "--no-progress") == 2
    assert "was trained on 'CartPole-v1'" in capsys.readouterr().err
    assert brims("test", str(run), "--no-progress") == 2
    assert "was trained on CartPole-v1" in capsys.readouterr().err


def test_run_folder_refuses_another_config(smoke_runs, tmp_path, capsys):
    config = write(tmp_path / "other.yaml", tiny_config(ppo={"lr": 0.01}))
    assert brims("train", str(config), "--run-dir", str(smoke_runs["brims"]), "--no-progress") == 2
    assert "differs in ppo.lr" in capsys.readouterr().err


@pytest.mark.parametrize("env_id", ["MiniGrid-MemoryS7-v0", "ALE/Pong-v5"])
def test_image_environments_train(tmp_path, env_id):
    config = tiny_config(env={"id": env_id, "hide_velocity": False}, ppo={"total_steps": 64, "rollout_steps": 16},
                         train={"eval_episodes": 1})
    if env_id.startswith("ALE/"):
        config["ppo"]["clip_rewards"] = True
        config["env"]["num_envs"] = 1
        config["ppo"]["minibatches"] = 1
    run = tmp_path / "run"
    # No evaluation: a Pong episode is thousands of steps.
    train(run, load_rl_config(base=config), progress=False, test_after=False)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["env_steps"] == 64


def test_resume_after_kill_continues_where_it_stopped(tmp_path):
    """A real run killed with SIGKILL after a checkpoint, then resumed: the curve continues from
    the checkpoint's update (no step counted twice or lost) and the run ends at its budget."""
    config = write(tmp_path / "c.yaml", tiny_config(ppo={"total_steps": 64 * 20}))
    run = tmp_path / "run"
    process = subprocess.Popen(cli_command("train", str(config), "--run-dir", str(run), "--no-progress"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and read_checkpoint(last)["update"] >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    killed_at = read_checkpoint(last)["update"]  # a valid checkpoint after kill -9 (atomic writes)
    assert 2 <= killed_at < 20
    assert brims("train", str(run), "--no-progress") == 0
    checkpoint = read_checkpoint(last)
    assert checkpoint["update"] == 20 and checkpoint["env_steps"] == 64 * 20
    steps = [int(line.split(",")[1]) for line in (run / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [64 * u for u in range(1, 21)]
    sessions = json.loads((run / "train_time.json").read_text())["sessions"]
    # The killed session keeps its time up to its last checkpoint, where the next one resumed
    # (the RL loop saves only last.ckpt).
    assert [(s["from_update"], s["to_update"], s["ended"]) for s in sessions] == [(0, killed_at, False),
                                                                                 (killed_at, 20, True)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(tmp_path):
    config = write(tmp_path / "c.yaml", tiny_config(train={"device": "cuda"}))
    assert brims("train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress") == 0


# ---- the quick check ------------------------------------------------------------------------------------

QUICK_STEPS, QUICK_RETURN = 15_360, 40.0
# A tenth of the preset's gradient steps per environment step (8 per 512 steps, not 40 per 256):
# BRIMs' many small per-step kernels make the preset's updates too slow for the test suite.
QUICK_UPDATES = ("env.num_envs=16", "ppo.epochs=4", "ppo.minibatches=2")


def test_quick_check_hidden_velocity_cartpole(tmp_path):
    """The BRIMs policy of the ``rl-cartpole-cpu`` preset with lighter updates (QUICK_UPDATES), on
    CartPole seeing only position and angle, averages at least QUICK_RETURN over its last 100 training episodes within QUICK_STEPS
    environment steps (30 updates). Random play averages about 22 and the rule "push towards the
    side the pole leans" about 39: this checks that PPO learns, not yet that the core remembers
    (returns that need the inferred velocity come later; see the README's table)."""
    config = load_rl_config(resolve_config("rl-cartpole-cpu"), [f"ppo.total_steps={QUICK_STEPS}", *QUICK_UPDATES])
    metrics = train(tmp_path / "run", config, progress=False, test_after=False)
    assert metrics["env_steps"] <= QUICK_STEPS + config.steps_per_update
    assert metrics["train_return_last100"] >= QUICK_RETURN, metrics
