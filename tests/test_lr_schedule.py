"""The cosine learning-rate schedule: its curve, that a training run follows it (and logs it), that a
kill resumes it where it was, and that a cosine run refuses an extension that would bend its curve."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from cli_support import brims
from test_run_lifecycle import STEPS, assert_same_weights, lifecycle_config, run_killed, trained
from test_training_runs import write_config

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.run_folder import read_log_rows
from brims_experiments.train.schedule import learning_rate_factor

LR, FINAL = 0.02, 0.1


@pytest.mark.parametrize("final", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("total", [1, 7, 1000])
def test_cosine_falls_from_one_to_its_final_fraction(total, final):
    factors = [learning_rate_factor("cosine", step, total, final) for step in range(total + 2)]
    assert factors[0] == 1.0
    assert factors[total] == pytest.approx(final, abs=1e-12) == factors[total + 1]  # flat after the budget
    assert all(later <= earlier for earlier, later in itertools.pairwise(factors))
    assert factors[0] > factors[total] or final == 1.0
    if total % 2 == 0:
        assert factors[total // 2] == pytest.approx((1 + final) / 2)


def test_constant_is_one_at_every_step():
    assert {learning_rate_factor("constant", step, 10, 0.0) for step in range(12)} == {1.0}


def cosine_config() -> dict:
    values = lifecycle_config()
    values["train"].update({"lr": LR, "lr_schedule": "cosine", "lr_final_fraction": FINAL})
    return values


def logged_rates(folder: Path) -> dict[int, float]:
    return {row["steps"]: row["train/lr"] for row in read_log_rows(folder / "logs" / "metrics.csv") if "train/lr" in row}


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("cosine") / "run", cosine_config())


def test_a_cosine_run_follows_and_logs_its_schedule(cosine_run):
    rates = logged_rates(cosine_run)
    assert rates, "train/lr is not in the log"
    for steps, rate in rates.items():  # the rate of the step that made the logged row: step steps - 1
        assert rate == pytest.approx(LR * learning_rate_factor("cosine", steps - 1, STEPS, FINAL), rel=1e-6)
    optimizer = read_checkpoint(cosine_run / "checkpoints" / "last.ckpt")["optimizer_states"][0]
    last = LR * learning_rate_factor("cosine", STEPS - 1, STEPS, FINAL)
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(last, rel=1e-6)  # the last step's


def test_a_constant_run_logs_no_rate(tmp_path):
    values = lifecycle_config(max_steps=3)
    values["train"]["validate_every"] = 3
    folder = trained(tmp_path / "run", values)
    assert "train/lr" not in (folder / "logs" / "metrics.csv").read_text()


def test_a_killed_cosine_run_resumes_on_its_curve(cosine_run, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    run_killed(folder, write_config(tmp_path / "run.yaml", cosine_config()), 4, "train_batch_end", monkeypatch)
    assert brims("train", str(folder), "--no-progress") == 0
    assert_same_weights(folder, cosine_run)
    assert logged_rates(folder) == logged_rates(cosine_run)


@pytest.mark.parametrize("budget", ["train.max_steps=24", "train.epochs=20"])
def test_a_cosine_run_refuses_an_extension(cosine_run, capsys, budget):
    before = (cosine_run / "config.yaml").read_text()
    assert brims("train", str(cosine_run), "--no-progress", "--set", budget) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train.lr_schedule=cosine was fixed by its budget" in err
    assert (cosine_run / "config.yaml").read_text() == before


def test_the_cosine_formula():
    assert learning_rate_factor("cosine", 1, 4, 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
