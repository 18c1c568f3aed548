"""The generated tasks on the harness: the adding problem's data, endless resumable training
data, and copying/adding runs end to end through ``brims train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from brims_experiments.cli import main
from brims_experiments.config_files import ConfigError
from brims_experiments.tasks.adding import TRIVIAL_MSE, AddingTaskConfig, make_adding_batch
from brims_experiments.train.config import load_config
from brims_experiments.train.datamodule import FreshBatchSampler, IndexedExamples
from brims_experiments.train.tasks import make_task

TINY_CORE = {
    "kind": "brims", "compile": False, "brims": {
        "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4,
    },
}


def test_adding_batch_marks_one_step_per_half_and_sums_them():
    config = AddingTaskConfig(length=9)
    inputs, targets = make_adding_batch(config, 200, torch.Generator().manual_seed(0))
    assert inputs.shape == (9, 200, 2) and targets.shape == (200,)
    markers = inputs[..., 1]  # (T, B)
    assert torch.equal(markers.sum(0), torch.full((200,), 2.0))
    assert torch.equal(markers[:4].sum(0), torch.ones(200))  # one in the first half (9 // 2 = 4 steps)
    assert torch.allclose((inputs[..., 0] * markers).sum(0), targets)
    assert ((inputs[..., 0] >= 0) & (inputs[..., 0] < 1)).all()


def test_adding_trivial_baseline_is_one_sixth():
    _, targets = make_adding_batch(AddingTaskConfig(50), 200_000, torch.Generator().manual_seed(1))
    assert abs(((targets - 1) ** 2).mean().item() - TRIVIAL_MSE) < 3e-3


@pytest.mark.parametrize("length", [0, 1, True, 2.5])
def test_adding_length_errors(length):
    with pytest.raises(ValueError, match="length"):
        AddingTaskConfig(length)


def test_same_seed_same_adding_batch():
    first = make_adding_batch(AddingTaskConfig(20), 4, torch.Generator().manual_seed(3))
    second = make_adding_batch(AddingTaskConfig(20), 4, torch.Generator().manual_seed(3))
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.targets, second.targets)


def test_fresh_sampler_never_repeats_an_example_across_epochs():
    sampler = FreshBatchSampler(size=40, batch_size=8, seed=0)
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen += [i for batch in sampler for i in batch]
    assert sorted(seen) == list(range(120))


def test_fresh_sampler_resumes_mid_epoch_and_shards():
    sampler = FreshBatchSampler(size=40, batch_size=4, seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.load_state_dict({"epoch": 2, "batches_done": 3})
    sampler.set_epoch(2)
    assert list(sampler) == whole[3:]
    ranks = [FreshBatchSampler(size=40, batch_size=4, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [{i for batch in r for i in batch} for r in ranks]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 20


def test_indexed_examples_are_a_function_of_their_index():
    task = make_task(load_config(overrides=["task=copying", "data.train_gap=3"]))
    examples = IndexedExamples(lambda count, generator: task.draw(3, count, generator), seed=5)
    first, again, other = examples[7], examples[7], examples[8]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (2 * 10 + 3 + 1, 10)  # (T, V): one-hot tokens


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.train_gap=-1", "data.train_gap"),
        ("data.test_gaps=[-3]", "data.test_gaps"),
        ("data.copy_length=0", "data.copy_length"),
        ("data.train_sequences=0", "data.train_sequences"),
        ("data.dataset=mnist", "dataset"),
    ],
)
def test_copying_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=["task=copying", override])


def test_unknown_task_is_named():
    with pytest.raises(ConfigError, match="task"):
        load_config(overrides=["task=juggling"])


def test_adding_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.test_lengths"):
        load_config(overrides=["task=adding", "data.test_lengths=[1]"])


def _run(tmp_path: Path, task: str, data: dict) -> dict:
    config = {
        "task": task,
        "data": {"train_sequences": 64, "validation_sequences": 20, "test_sequences": 30, "batch_size": 16,
                 "eval_batch_size": 16, **data},  # 30 test sequences in batches of 16: the last one is short
        "model": {"embedding_size": 8, "core": TINY_CORE},
        "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 2, "accelerator": "cpu", "devices": 1, "threads": 1},
    }
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir), "--no-progress"]) == 0
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv",
                 "learning_curves.png", "module_activity.png"):
        assert (run_dir / name).is_file(), name
    return json.loads((run_dir / "metrics.json").read_text())


def test_copying_run_end_to_end(tmp_path, capsys):
    metrics = _run(tmp_path, "copying", {"copy_length": 3, "num_classes": 4, "train_gap": 4, "test_gaps": [9]})
    assert metrics["task"] == "copying" and metrics["global_step"] == 2 * 64 // 16
    assert set(metrics["gap"]) == {"4", "9"}
    for gap, result in metrics["gap"].items():
        assert result["sequences"] == 30 and result["steps"] == 2 * 3 + int(gap) + 1
        assert 0 <= result["sequence_acc"] <= result["symbol_acc"] <= 1
    assert (tmp_path / "run" / "accuracy_by_gap.png").is_file()
    assert "gap 9 seq acc" in capsys.readouterr().out


def test_adding_run_end_to_end(tmp_path, capsys):
    metrics = _run(tmp_path, "adding", {"train_length": 6, "test_lengths": [12]})
    assert set(metrics["length"]) == {"6", "12"}
    assert all(result["sequences"] == 30 and result["mse"] >= 0 for result in metrics["length"].values())
    assert metrics["trivial_mse"] == pytest.approx(1 / 6)
    assert (tmp_path / "run" / "mse_by_length.png").is_file()
    out = capsys.readouterr().out
    assert "length 12 MSE" in out and "0.1667" in out
