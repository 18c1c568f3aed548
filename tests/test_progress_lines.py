"""The progress lines of a run without a bar: the time left is not inflated by a slow (compiling) first
step, the epoch of the last line is the one the run stopped in, and Lightning's advertising, deprecation
warnings and model summary do not drown them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from brims_experiments.train.progress import ProgressLines


class Clock:
    """Synthetic seconds: the test sets ``now``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Training:
    """Drives a real :class:`ProgressLines` through a run as Lightning does, with the trainer's fields
    the callback reads, the clock advanced by each step's (synthetic) duration."""

    def __init__(self, run_dir: Path, total: int, batches_per_epoch: int) -> None:
        self.clock = Clock()
        self.lines = ProgressLines(run_dir, every_seconds=30.0, clock=self.clock)
        self.batches = batches_per_epoch
        self.trainer = SimpleNamespace(global_step=0, current_epoch=0, estimated_stepping_batches=total,
                                       callback_metrics={}, is_global_zero=True)
        self.lines.on_train_start(self.trainer, None)

    def step(self, seconds: float) -> None:
        self.clock.now += seconds
        self.trainer.global_step += 1
        self.lines.on_train_batch_end(self.trainer, None, None, None, self.trainer.global_step - 1)
        if self.trainer.global_step % self.batches == 0:
            self.trainer.current_epoch += 1  # Lightning's count, advanced when an epoch ends

    def end(self) -> None:
        # Lightning counts an epoch cut short by max_steps as done: current_epoch is past it here
        self.trainer.current_epoch += 1
        self.lines.on_train_end(self.trainer, None)

    def written(self) -> list[str]:
        return self.lines.path.read_text().splitlines()


def left_seconds(line: str) -> float:
    amount, unit = re.search(r"about ([\d.]+) (s|min|h) left", line).groups()
    return float(amount) * {"s": 1, "min": 60, "h": 3600}[unit]


def rate(line: str) -> float:
    return float(re.search(r"([\d.]+) steps/s", line).group(1))


def test_an_hour_of_compiling_in_the_first_step_is_not_in_the_time_left(tmp_path, capsys):
    run = Training(tmp_path, total=10_000, batches_per_epoch=5000)
    run.step(3600.0)  # the first step compiles
    for _ in range(2000):
        run.step(0.125)  # then 8 steps/s
    lines = [line for line in run.written() if "steps/s" in line]
    assert lines, run.written()
    for line in lines:
        step = int(re.search(r"step (\d+)/", line).group(1))
        assert rate(line) == pytest.approx(8.0)
        assert left_seconds(line) == pytest.approx((10_000 - step) / 8, rel=0.05)  # not "about 33 h left"
    assert "h left" not in capsys.readouterr().err


def test_a_compile_spread_over_the_first_steps_leaves_the_rate_once_the_window_passes_it(tmp_path, capsys):
    run = Training(tmp_path, total=100_000, batches_per_epoch=100_000)
    for _ in range(5):
        run.step(60.0)  # five compiling steps
    for _ in range(8 * 60 * 10):
        run.step(0.125)  # ten minutes at 8 steps/s
    last = run.written()[-1]
    assert rate(last) == pytest.approx(8.0)
    step = int(re.search(r"step (\d+)/", last).group(1))
    assert left_seconds(last) == pytest.approx((100_000 - step) / 8, rel=0.05)


def test_no_speed_is_claimed_before_a_step_after_the_first_was_timed(tmp_path, capsys):
    run = Training(tmp_path, total=100, batches_per_epoch=100)
    run.step(120.0)  # compiling: the line at its end has nothing to measure a speed from
    (_, first) = run.written()
    assert first.split(" ", 2)[2] == "step 1/100, epoch 0"


def test_the_last_line_names_the_epoch_the_run_stopped_in(tmp_path, capsys):
    run = Training(tmp_path, total=3, batches_per_epoch=10)
    for _ in range(3):
        run.step(0.5)
    run.end()
    assert run.written()[-1].endswith("(training done)")
    assert "step 3/3, epoch 0," in run.written()[-1]


def test_the_last_line_of_a_run_that_ends_with_its_last_epoch_names_that_epoch(tmp_path, capsys):
    run = Training(tmp_path, total=20, batches_per_epoch=10)
    for _ in range(20):
        run.step(0.5)
    run.trainer.current_epoch -= 1  # end() advances it past the last one, as Lightning does
    run.end()
    assert "step 20/20, epoch 1," in run.written()[-1]


# ---- a real run's console -------------------------------------------------------------------------

NOISE = ["💡 Tip", "litlogger", "litmodels", "LeafSpec", "is deprecated", "Total Flops", "Trainable params",
         "Total estimated model params size", "TPU available"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``brims train adding-cpu`` for 2 steps of the LSTM, one thread, no bar: its console and folder."""
    folder = tmp_path_factory.mktemp("progress")
    overrides = ["train.max_steps=2", "train.validate_every=2", "train.threads=1", "model.core.kind=lstm",
                 "data.validation_sequences=64", "data.test_sequences=64"]
    result = subprocess.run(
        [sys.executable, "-m", "brims_experiments.cli", "train", "adding-cpu", "--run-dir", str(folder / "run"),
         "--no-progress", "--set", *overrides],
        check=False, cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr, folder / "run"


def test_a_real_run_prints_none_of_lightnings_advertising_deprecations_or_summary(tiny_run):
    output, _ = tiny_run
    assert "training from step 0 of 2" in output  # ours are there
    found = [noise for noise in NOISE if noise in output]
    assert not found, output


def test_a_real_run_that_stopped_in_epoch_0_says_epoch_0_last(tiny_run):
    _, run_dir = tiny_run
    last = (run_dir / "logs" / "progress.log").read_text().splitlines()[-1]
    assert "step 2/2, epoch 0," in last and last.endswith("(training done)")


def test_a_real_run_prints_no_note_on_weights_only(tiny_run):
    """Lightning says "`weights_only` was not set, defaulting to `False`" at every save that does not
    say it: train/run.py's SaveLast must call ``trainer.save_checkpoint(path, weights_only=False)``."""
    output, _ = tiny_run
    assert "weights_only" not in output, output
