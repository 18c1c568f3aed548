"""The command line as a new user meets it: every failure a user can cause ends in one message and
a non-zero exit code (a traceback only with --debug), and a start that fails its checks leaves
nothing in the run folder that blocks the corrected command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import brims, cli_command, start_cli
from test_language_model import documents, lm_config

from brims_experiments.data.corpora import prepare_corpus

TINY_CORE = {
    "kind": "brims", "compile": False, "brims": {
        "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4,
    },
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def adding_config(tmp_path: Path, **train) -> Path:
    """A tiny adding run (generated data: no fetch)."""
    config = {
        "task": "adding",
        "data": {"train_length": 6, "test_lengths": [8], "train_sequences": 32, "validation_sequences": 16,
                 "test_sequences": 16, "batch_size": 16, "eval_batch_size": 16},
        "model": {"embedding_size": 8, "core": TINY_CORE},
        "train": {"epochs": 1, "lr": 0.01, "checkpoint_every": 1, "accelerator": "cpu", "devices": 1, "threads": 1,
                  **train},
    }
    path = tmp_path / "adding.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*argv), capture_output=True, text=True, timeout=timeout, check=False)


def interrupt(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> str:
    """Send Ctrl-C (SIGINT) to ``process`` once ``ready()``; its stderr after it stopped."""
    try:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        os.kill(process.pid, signal.SIGINT)
        return process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()


def assert_one_message(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr, result.stderr


# ---- a failed start leaves nothing that blocks the fixed command ------------------------------------


FAILED_STARTS = [
    pytest.param(["train.precision=17"], "precision", id="precision"),
    pytest.param(["train.accelerator=gpu"], "no CUDA device is available", id="gpu", marks=no_cuda),
]


@pytest.mark.parametrize(("bad", "message"), FAILED_STARTS)
def test_a_failed_start_leaves_nothing_that_blocks_the_retry(tmp_path, capsys, bad, message):
    config, run = adding_config(tmp_path), tmp_path / "run"
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress", "--set", *bad) == 2
    assert message in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress") == 0  # the corrected command
    assert (run / "metrics.json").is_file()


def test_a_model_that_cannot_be_built_leaves_nothing_that_blocks_the_retry(tmp_path, capsys):
    """A tied embedding must be as wide as the core's output: refused when the model is built."""
    corpus = tmp_path / "text"
    prepare_corpus("austen", documents(0), corpus)
    config, run = tmp_path / "lm.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(lm_config(corpus)))
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress", "--set", "model.embedding_size=6") == 2
    assert "tie_weights" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress") == 0


def test_missing_data_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "smnist-cpu", "--run-dir", str(run), "--no-progress", "--set", f"data.data_dir={tmp_path}/none"]
    assert brims(*args) == 2
    assert f"run: brims fetch mnist --data-dir {tmp_path}/none" in capsys.readouterr().err  # fetches where it reads
    assert not (run / "config.yaml").exists()


def test_a_failed_rl_start_leaves_nothing_that_blocks_the_retry(tmp_path, capsys):
    run = tmp_path / "rl"
    tiny = ["ppo.total_steps=64", "ppo.rollout_steps=16", "ppo.chunk_length=8", "ppo.minibatches=2", "ppo.epochs=1",
            "env.num_envs=2", "train.eval_episodes=1", "train.threads=1"]
    typo = ["env.id=CartPol-v1", "env.hide_velocity=false"]  # valid as a config, refused by gymnasium
    assert brims("train", "rl-cartpole-cpu", "--run-dir", str(run), "--no-progress", "--set", *typo, *tiny) == 2
    assert "CartPol-v1" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    assert brims("train", "rl-cartpole-cpu", "--run-dir", str(run), "--no-progress", "--set", *tiny) == 0


@pytest.mark.parametrize("preset", ["copying-cpu", "rl-cartpole-cpu"])
def test_a_run_folder_of_another_task_is_refused_before_anything_starts(tmp_path, capsys, preset):
    """Refused from the folder's config alone: before the compile banner, the trainer or the
    environments, and with the folder's task named (not a field the other task lacks)."""
    from brims_experiments.train.config import load_config

    run = tmp_path / "adding-run"
    run.mkdir()
    held = load_config(adding_config(tmp_path)).to_yaml()
    (run / "config.yaml").write_text(held)
    assert brims("train", preset, "--run-dir", str(run), "--no-progress") == 2
    out, err = capsys.readouterr()
    assert f"holds a run of task adding, not {preset.split('-')[0]}" in err, err
    assert "compiling" not in out
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == held


# ---- one message, never a traceback -----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_adding_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    run = folder / "run"
    result = run_cli("train", str(adding_config(folder)), "--run-dir", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "--device must be cpu or cuda[:index], got 'tpu'"),
     pytest.param("cuda", "--device=cuda, but no CUDA device is available", marks=no_cuda)],
)
def test_test_on_a_device_this_machine_lacks(finished_adding_run, device, message):
    assert_one_message(run_cli("test", str(finished_adding_run), "--device", device, "--no-progress"), message)


@no_cuda
def test_training_on_a_gpu_this_machine_lacks(tmp_path):
    result = run_cli("train", str(adding_config(tmp_path)), "--run-dir", str(tmp_path / "run"),
                     "--set", "train.accelerator=gpu")
    assert_one_message(result, "no CUDA device is available")


def test_debug_shows_the_traceback(finished_adding_run):
    result = run_cli("--debug", "test", str(finished_adding_run), "--device", "tpu", "--no-progress")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_without_the_train_extra_says_what_to_install(tmp_path):
    """As if PyYAML were not installed (the library needs torch only; the experiments need the extra)."""
    code = ("import sys; sys.modules['yaml'] = None; from brims_experiments.cli import main; "
            f"sys.exit(main(['train', 'adding-cpu', '--run-dir', {str(tmp_path / 'run')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert_one_message(result, "needs the experiments' packages (yaml is not installed): pip install 'brims[train]'")


def test_rl_without_the_rl_extra_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['gymnasium'] = None; from brims_experiments.cli import main; "
            f"sys.exit(main(['train', 'rl-cartpole-cpu', '--run-dir', {str(tmp_path / 'run')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert_one_message(result, "needs reinforcement learning packages (gymnasium is not installed): "
                               "pip install 'brims[rl]'")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_an_rl_run_stops_cleanly_and_says_how_to_resume(tmp_path):
    run = tmp_path / "rl"
    process = start_cli("train", "rl-cartpole-cpu", "--run-dir", str(run), "--no-progress", "--set",
                        "ppo.total_steps=1000000", "env.num_envs=2", "train.threads=1", "train.checkpoint_every=1",
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = interrupt(process, (run / "checkpoints" / "last.ckpt").is_file)
    assert process.returncode == 130
    assert "Traceback" not in stderr, stderr
    assert f"{run} keeps its last checkpoint: resume with `brims train {run}`" in stderr
    assert (run / "checkpoints" / "last.ckpt").is_file()


# ---- a compiled core says that it compiles, and its code is cached beside the data -----------------


def test_compiled_code_is_kept_beside_the_data_unless_chosen(tmp_path, monkeypatch):
    from brims_experiments.compile_cache import keep_compiled_code

    monkeypatch.setenv("BRIMS_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    keep_compiled_code()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    keep_compiled_code()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_the_brims_command_chooses_the_cache_before_torch_fixes_its_own(tmp_path):
    """Importing torch._dynamo (Lightning, the training modules) sets torch's default cache folder:
    in a fresh process the command's folder must still be the one torch.compile uses."""
    code = ("from brims_experiments.cli import main; main(['config', 'adding-cpu']); "
            "from torch._inductor.runtime.cache_dir_utils import cache_dir; print('cache:', cache_dir())")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["BRIMS_DATA"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"cache: {tmp_path / 'inductor'}" in done.stdout


@pytest.mark.parametrize(("core", "says"), [({"kind": "brims", "compile": True}, True),
                                            ({"kind": "brims", "compile": False}, False),
                                            ({"kind": "lstm", "compile": True}, False)])
def test_a_compiled_core_says_it_is_compiling(capsys, core, says):
    from brims_experiments.run_folder import say_if_compiling
    from brims_experiments.train.config import load_config

    say_if_compiling(load_config(base={"model": {"core": core}}))
    assert ("compiling the brims time step on the first batches" in capsys.readouterr().out) is says


# ---- progress ----------------------------------------------------------------------------------------


def test_without_a_bar_progress_goes_to_lines_on_the_console_and_a_log_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert brims("train", str(adding_config(tmp_path, epochs=3)), "--run-dir", str(run), "--no-progress",
                 "--set", "train.max_steps=5") == 0  # 2 steps an epoch: the budget is 5 steps, not 6
    err = capsys.readouterr().err
    assert "training from step 0 of 5" in err and "step 5/5" in err and "(training done)" in err
    lines = (run / "logs" / "progress.log").read_text().splitlines()
    assert lines[0].endswith("training from step 0 of 5") and lines[-1].endswith("(training done)")


def test_the_bar_counts_the_run_budget_not_the_epoch(tmp_path):
    """adding's epoch is 2 batches here; with train.max_steps=3 over 2 epochs the run is 3 steps
    (Lightning's own bar counted each epoch's batches: 2 per epoch)."""
    result = run_cli("train", str(adding_config(tmp_path, epochs=2)), "--run-dir", str(tmp_path / "run"),
                     "--set", "train.max_steps=3")
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).replace("\r", "\n")  # Lightning draws its bars on stdout
    bars = [part.strip() for part in output.splitlines() if "training (epoch" in part]
    assert bars and all("/3 [" in bar for bar in bars), output[-2000:]
    assert "3/3 [" in bars[-1]


@pytest.mark.parametrize("phase", ["training", "testing"])
def test_ctrl_c_during_a_supervised_run_stops_cleanly_and_says_how_to_resume(tmp_path, phase):
    """Lightning stops training gracefully on Ctrl-C; the test phase after it is ours to stop."""
    run = tmp_path / "run"
    budget = {"epochs": 1000} if phase == "training" else {"epochs": 1}
    big_test = ["data.test_sequences=200000"] if phase == "testing" else []
    process = start_cli("train", str(adding_config(tmp_path, **budget)), "--run-dir", str(run), "--no-progress",
                        "--set", *big_test, "data.eval_batch_size=16",
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    train_time = run / "train_time.json"  # its session entry ends just before the test phase starts

    def ready() -> bool:
        if phase == "training":
            return (run / "checkpoints" / "last.ckpt").is_file()
        return train_time.is_file() and '"ended": true' in train_time.read_text()

    stderr = interrupt(process, ready)
    assert process.returncode != 0
    assert "Traceback" not in stderr, stderr
    assert f"resume with `brims train {run}`" in stderr
    assert (run / "checkpoints" / "last.ckpt").is_file()


@no_cuda
def test_the_triton_backend_on_a_cpu_is_refused_before_the_run_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the tests' interpreter would run it
    config, run = adding_config(tmp_path), tmp_path / "run"
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress", "--set",
                 "model.core.brims.backend=triton") == 2
    assert "model.core.brims.backend=triton runs its kernels on a CUDA GPU: set train.accelerator=gpu" in (
        capsys.readouterr().err)
    assert not (run / "config.yaml").exists()


def test_the_triton_backend_is_not_compiled_again(tmp_path, capsys):
    config, run = adding_config(tmp_path), tmp_path / "run"
    assert brims("train", str(config), "--run-dir", str(run), "--no-progress", "--set",
                 "model.core.brims.backend=triton", "model.core.compile=true") == 2
    assert "backend=triton is fused already: set model.core.compile=false" in capsys.readouterr().err
