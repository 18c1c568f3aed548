"""The run folder keeps its promises: a kill at any instant resumes to the uninterrupted run's
selection, a finished run is left untouched, an extension equals the longer run, one process at
a time, and a config changed by hand is refused.

A kill is a fault injected into a real training session (an exception raised from a callback
that runs after the checkpoint callbacks, so the files on disk are exactly those a ``kill -9``
at that instant leaves); the resume is the real ``brims train <run folder>``. One real SIGKILL
test lives in ``test_training_runs.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_support import brims
from lightning.pytorch.callbacks import Checkpoint
from test_training_runs import write_config

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.train import run as train_run_module

STEPS, VALIDATE_EVERY, CHECKPOINT_EVERY, STEPS_PER_EPOCH = 12, 3, 3, 8


def lifecycle_config(max_steps: int = STEPS) -> dict:
    """A tiny BRIMs (with attention dropout, so that resuming must restore the random state) on the
    adding task: its validation MSE goes down and up, so a lost validation changes the selection."""
    return {
        "task": "adding",
        "data": {"train_length": 10, "test_lengths": [20], "train_sequences": STEPS_PER_EPOCH * 16,
                 "validation_sequences": 64, "test_sequences": 64, "batch_size": 16},
        "model": {"embedding_size": 8, "core": {"kind": "brims", "compile": False, "brims": {
            "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
            "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4, "attention_dropout": 0.1}}},
        "train": {"epochs": 10, "max_steps": max_steps, "lr": 0.02, "validate_every": VALIDATE_EVERY,
                  "checkpoint_every": CHECKPOINT_EVERY, "accelerator": "cpu", "devices": 1, "threads": 1},
    }


class Killed(Exception):
    """The injected fault: the session ends here, with what is on disk."""


class KillAt(Checkpoint):
    """Ends the session at ``(step, hook)``: after the checkpoint callbacks of that hook have run."""

    def __init__(self, step: int, hook: str) -> None:
        self.step, self.hook = step, hook

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook == "train_batch_end" and trainer.global_step == self.step:
            raise Killed(f"killed after step {self.step}")

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.hook == "validation_start" and trainer.global_step == self.step and trainer.state.fn == "fit":
            raise Killed(f"killed during the validation at step {self.step}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.hook == "validation_end" and trainer.global_step == self.step and trainer.state.fn == "fit":
            raise Killed(f"killed after the validation at step {self.step}")


def run_killed(folder: Path, config_path: Path, step: int, hook: str, monkeypatch) -> None:
    original = train_run_module.make_trainer

    def with_fault(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.callbacks.append(KillAt(step, hook))
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(train_run_module, "make_trainer", with_fault)
        with pytest.raises(Killed):
            brims("train", str(config_path), "--run-dir", str(folder), "--no-progress")


def selection(folder: Path) -> tuple[int, float, dict]:
    """best.ckpt's step and validation score, and the test metrics (without the timings)."""
    best = read_checkpoint(folder / "checkpoints" / "best.ckpt")
    metrics = json.loads((folder / "metrics.json").read_text())
    scores = [s["best_model_score"] for s in best["callbacks"].values()
              if isinstance(s, dict) and s.get("best_model_score") is not None]
    tested = {k: v for k, v in metrics.items() if k in ("length", "global_step", "val_loss")}
    return best["global_step"], float(scores[0]), tested


def trained(folder: Path, values: dict) -> Path:
    """A run of the config ``values`` trained to its end in ``folder`` (its config file beside it)."""
    config = write_config(folder.parent / f"{folder.name}.yaml", values)
    assert brims("train", str(config), "--run-dir", str(folder), "--no-progress") == 0
    return folder


def assert_same_weights(ours: Path, theirs: Path) -> None:
    """The two runs' ``last.ckpt`` hold the same step and bit-identical weights."""
    mine, reference = (read_checkpoint(f / "checkpoints" / "last.ckpt") for f in (ours, theirs))
    assert mine["global_step"] == reference["global_step"] > 0
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, mine["state_dict"][name]), f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("uninterrupted") / "run", lifecycle_config())


def kill_points(slow: bool) -> list[tuple[int, str]]:
    """Every instant between two saves (slow), or those that matter most: during and just after a
    validation, between the save of a step and the next validation, and at an epoch's end."""
    every = [(step, hook) for step in range(1, STEPS)
             for hook in ("train_batch_end", "validation_start", "validation_end")
             if hook == "train_batch_end" or step % VALIDATE_EVERY == 0]
    if slow:
        return every
    return [(3, "validation_end"), (9, "validation_end"), (9, "validation_start"), (4, "train_batch_end"),
            (STEPS_PER_EPOCH, "train_batch_end")]


@pytest.mark.parametrize(("step", "hook"), kill_points(slow=False))
def test_a_kill_resumes_to_the_uninterrupted_selection(uninterrupted, tmp_path, monkeypatch,
                                                      step, hook):
    folder = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", lifecycle_config())
    run_killed(folder, config, step, hook, monkeypatch)
    assert brims("train", str(folder), "--no-progress") == 0
    assert selection(folder) == selection(uninterrupted)


@pytest.mark.exhaustive  # about 1.5 min: test_a_kill_resumes_to_the_uninterrupted_selection checks the critical instants
@pytest.mark.parametrize(("step", "hook"), kill_points(slow=True))
def test_a_kill_at_any_instant_resumes_to_the_uninterrupted_selection(uninterrupted, tmp_path,
                                                                      monkeypatch, step, hook):
    folder = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", lifecycle_config())
    run_killed(folder, config, step, hook, monkeypatch)
    assert brims("train", str(folder), "--no-progress") == 0
    assert selection(folder) == selection(uninterrupted)


def file_states(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_training_a_finished_run_leaves_every_file_untouched(uninterrupted, tmp_path):
    run = shutil.copytree(uninterrupted, tmp_path / "again")
    before = file_states(run)
    assert brims("train", str(run), "--no-progress") == 0
    assert file_states(run) == before


@pytest.mark.parametrize(("field", "short", "long"), [("max_steps", STEPS // 2, STEPS), ("epochs", 1, 2)])
def test_an_extension_equals_the_uninterrupted_longer_run(tmp_path, field, short, long):
    def config(budget: int) -> dict:
        values = lifecycle_config()
        values["train"].update({"max_steps": 0, "epochs": 1, field: budget})
        return values

    extended = trained(tmp_path / "extended", config(short))
    reference = trained(tmp_path / "reference", config(long))
    assert brims("train", str(extended), "--no-progress", "--set", f"train.{field}={long}") == 0
    assert_same_weights(extended, reference)
    assert selection(extended) == selection(reference)
    logged = [(f / "logs" / "metrics.csv").read_text().splitlines() for f in (extended, reference)]
    assert logged[0] == logged[1]


HOLD_LOCK = """
import sys, time
from brims_experiments.run_lock import RunFolderLock
with RunFolderLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_the_run_folder_is_refused(uninterrupted, tmp_path, capsys):
    run = shutil.copytree(uninterrupted, tmp_path / "busy")
    before = file_states(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert brims("train", str(run), "--no-progress", "--set", f"train.max_steps={STEPS + 3}") == 2
        assert brims("test", str(run), "--no-progress") == 2
        err = capsys.readouterr().err
        assert err.count(f"is in use by another brims process (pid {holder.pid})") == 2
        assert file_states(run) == before  # the refused resume did not amend config.yaml either
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert brims("train", str(run), "--no-progress") == 0  # a killed holder leaves no stale lock


def test_a_config_changed_by_hand_is_refused(uninterrupted, tmp_path, capsys):
    run = shutil.copytree(uninterrupted, tmp_path / "edited")
    (run / "checkpoints" / "last.ckpt").write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes())
    text = (run / "config.yaml").read_text()
    assert "lr: 0.02" in text
    (run / "config.yaml").write_text(text.replace("lr: 0.02", "lr: 0.01"))
    assert brims("train", str(run), "--no-progress", "--set", f"train.max_steps={STEPS + 3}") == 2
    err = capsys.readouterr().err
    assert "differs from its checkpoint last.ckpt in train.lr" in err


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_run_dir_that_cannot_be_a_folder_is_one_message(tmp_path, capsys, where):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    run_dir = blocker if where == "file" else blocker / "run"
    config = write_config(tmp_path / "run.yaml", lifecycle_config())
    assert brims("train", str(config), "--run-dir", str(run_dir), "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder") and ("is a file" in err or "lies below the file" in err)


# ---- a command a user can get wrong ends in one message ------------------------------------------------


def one_message(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("text", "message"), [
    ("train: [epochs: 2\n", "is not valid YAML (line"),
    ("", "is empty"),
    ("- just\n- a list\n", "must hold a mapping of sections"),
])
def test_a_broken_run_config_is_one_message(uninterrupted, tmp_path, capsys, text, message):
    run = shutil.copytree(uninterrupted, tmp_path / "broken")
    (run / "config.yaml").write_text(text)
    assert brims("train", str(run), "--no-progress") == 2
    assert message in one_message(capsys)


def test_a_garbage_best_checkpoint_is_one_message(uninterrupted, tmp_path, capsys):
    from brims_experiments import load_run
    from brims_experiments.checkpoints import CheckpointError

    run = shutil.copytree(uninterrupted, tmp_path / "garbage")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"task: adding\n" * 40)
    assert brims("test", str(run), "--no-progress") == 2
    assert "is corrupted or not a safe checkpoint" in one_message(capsys)
    with pytest.raises(CheckpointError, match="best.ckpt is corrupted or not a safe checkpoint"):
        load_run(run)


@pytest.mark.parametrize("name", ["metrics.json", "train_time.json"])
def test_a_corrupted_record_is_one_message_before_any_training(uninterrupted, tmp_path, capsys, name):
    run = shutil.copytree(uninterrupted, tmp_path / "corrupted")
    (run / name).write_text('{"half": ')
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    args = ("--set", f"train.max_steps={STEPS + 3}") if name == "train_time.json" else ()
    assert brims("train", str(run), "--no-progress", *args) == 2
    message = one_message(capsys)
    assert name in message and "is corrupted" in message
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last  # nothing trained
    if name == "metrics.json":
        assert brims("compare", str(run), str(uninterrupted)) == 2
        assert "metrics.json (the run's test metrics) is corrupted" in one_message(capsys)


def test_testing_a_path_that_does_not_exist_says_so(tmp_path, capsys):
    assert brims("test", str(tmp_path / "nowhere"), "--no-progress") == 2
    assert one_message(capsys) == f"error: {tmp_path / 'nowhere'}: no such run folder or checkpoint"


def test_a_run_dir_that_cannot_be_created_is_one_message(tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", lifecycle_config())
    assert brims("train", str(config), "--run-dir", "/sys/brims-cannot-be-here", "--no-progress") == 2
    assert "cannot create run folder /sys/brims-cannot-be-here" in one_message(capsys)


def test_the_log_counts_steps_trained_from_one(uninterrupted, tmp_path):
    from brims_experiments.run_folder import read_log_rows

    rows = read_log_rows(uninterrupted / "logs" / "metrics.csv")
    header = (uninterrupted / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "steps" in header and "step" not in header
    assert [row["steps"] for row in rows if "val/loss" in row] == list(range(VALIDATE_EVERY, STEPS + 1, VALIDATE_EVERY))
    legacy = tmp_path / "metrics.csv"  # as brims 0.2 wrote it: Lightning's step, counted from 0
    legacy.write_text("epoch,step,val/loss\n0.0,2,0.5\n0.0,5,0.25\n")
    assert read_log_rows(legacy) == [{"epoch": 0.0, "steps": 3, "val/loss": 0.5}, {"epoch": 0.0, "steps": 6, "val/loss": 0.25}]
