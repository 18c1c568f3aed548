"""``brims export``: a trained run's core written with save_pretrained, read back by the library alone.

Two tiny copying runs (generated data, a few steps each) are trained once for the module through
the real harness: a BRIMs core and an LSTM core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import brims

from brims import BRIMs
from brims_experiments.checkpoints import CheckpointError
from brims_experiments.config_files import ConfigError
from brims_experiments.export import export_run
from brims_experiments.trained import load_run

TINY = {
    "task": "copying",
    "data": {"train_sequences": 16, "validation_sequences": 8, "test_sequences": 8, "batch_size": 8,
             "eval_batch_size": 8, "copy_length": 2, "num_classes": 3, "train_gap": 2, "test_gaps": [3]},
    "model": {"embedding_size": 4, "core": {"kind": "brims", "compile": False, "brims": {
        "hidden_sizes": [6, 6], "num_modules": [2, 3], "top_k": [1, 2], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4}}},
    "train": {"epochs": 1, "lr": 0.01, "checkpoint_every": 2, "accelerator": "cpu", "devices": 1, "threads": 1},
}


def train_tiny(folder: Path, kind: str) -> Path:
    config = folder.parent / f"{folder.name}.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert brims("train", str(config), "--run-dir", str(folder), "--no-progress", "--set",
                 f"model.core.kind={kind}") == 0
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {kind: train_tiny(root / kind, kind) for kind in ("brims", "lstm")}


def test_export_writes_a_core_that_from_pretrained_reads_back(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert brims("export", str(runs["brims"]), str(out)) == 0
    printed = capsys.readouterr().out
    assert str(out / "config.json") in printed and str(out / "model.safetensors") in printed
    run = load_run(runs["brims"])
    loaded = BRIMs.from_pretrained(out).eval()
    assert loaded.config == run.core.config and loaded.config.hidden_sizes == (6, 6)
    assert json.loads((out / "config.json").read_text())["format_version"] == 1
    for (name, a), (other, b) in zip(run.core.state_dict().items(), loaded.state_dict().items()):
        assert name == other and torch.equal(a, b), name
    x = torch.randn(7, 3, loaded.config.input_size, generator=torch.Generator().manual_seed(0))
    expected, expected_state = run.core(x)
    output, state = loaded(x)
    assert torch.equal(output, expected)
    assert all(torch.equal(a, b) for a, b in zip(state.h + state.c, expected_state.h + expected_state.c))


def test_export_run_of_a_checkpoint_file(runs, tmp_path):
    checkpoint = runs["brims"] / "checkpoints" / "last.ckpt"
    assert export_run(checkpoint, tmp_path / "last") == tmp_path / "last"
    last = load_run(checkpoint).core
    loaded = BRIMs.from_pretrained(tmp_path / "last")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), loaded.state_dict().values()))


def test_an_lstm_run_is_refused_in_one_line(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"torch\.nn\.modules\.rnn\.LSTM core \(model\.core\.kind=lstm\): "
                                          r"export writes brims\.BRIMs cores only"):
        export_run(runs["lstm"], tmp_path / "out")
    assert brims("export", str(runs["lstm"]), str(tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "brims.BRIMs cores only" in error
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_missing_run_is_one_message(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_run(tmp_path / "nowhere", tmp_path / "out")
    assert brims("export", str(tmp_path / "nowhere"), str(tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert error == f"error: run {tmp_path / 'nowhere'} does not exist: give a run folder or a .ckpt file\n"
    not_a_run = tmp_path / "config.yaml"
    not_a_run.write_text("task: copying\n")
    with pytest.raises(CheckpointError, match="neither a run folder nor a .ckpt file"):
        export_run(not_a_run, tmp_path / "out")


def test_an_output_path_that_is_a_file_is_refused(runs, tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    with pytest.raises(ConfigError, match="is a file: export writes a folder"):
        export_run(runs["brims"], target)


def test_export_help_names_its_arguments(capsys):
    with pytest.raises(SystemExit):
        brims("export", "--help")
    text = capsys.readouterr().out
    assert "run folder or .ckpt file" in text and "config.json and model.safetensors" in text
