"""The training harness end to end, on a tiny generated MNIST-like data set (never fetched data).

Covers ``brims train | test | compare`` through the command line, resuming after ``kill -9``
(same steps and same weights as an uninterrupted run), run-folder config checks, missing data
and foreign checkpoints, the resumable batch sampler, and a real two-process DDP run on CPU.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import brims, kill_training

from brims_experiments.checkpoints import CheckpointError, read_checkpoint
from brims_experiments.data.images import ImageSplit, save_image_dataset
from brims_experiments.run_folder import STEPS_COLUMN, read_log_rows
from brims_experiments.train.config import load_config
from brims_experiments.train.datamodule import ResumableBatchSampler
from brims_experiments.train.run import load_trained

TRAIN_IMAGES, TEST_IMAGES = 300, 100
TRAIN_LIMIT, BATCH, EPOCHS = 128, 16, 3
STEPS_PER_EPOCH = TRAIN_LIMIT // BATCH
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pattern_split(n: int, seed: int) -> ImageSplit:
    """28x28 images of faint noise with a bright bar whose position encodes the label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = (torch.rand(n, 28, 28, 1, generator=generator) * 60).to(torch.uint8)
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 5) * 14, (label % 5) * 5
        images[i, top : top + 14, left : left + 6] = 255
    return ImageSplit(images, labels)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    save_image_dataset("mnist", {"train": pattern_split(TRAIN_IMAGES, 0), "test": pattern_split(TEST_IMAGES, 1)}, root)
    return root


def tiny_config(data_dir: Path | str, **sections) -> dict:
    config = {
        "data": {
            "dataset": "mnist",
            "train_resolution": 6,
            "test_resolutions": [7],
            "noise": ["gaussian-0.3", "flip-0.05"],
            "validation_size": 50,
            "train_limit": TRAIN_LIMIT,
            "batch_size": BATCH,
            "eval_batch_size": 64,  # does not divide the 100 test images: the last batch is short
            "data_dir": str(data_dir),
        },
        "model": {
            "embedding_size": 8,
            "core": {
                "kind": "brims",
                "compile": False,
                "brims": {
                    "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1,
                    "input_key_size": 4, "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4,
                    "attention_dropout": 0.1,  # dropout draws random numbers: resuming must restore them
                },
            },
        },
        "train": {
            "epochs": EPOCHS, "lr": 0.01, "checkpoint_every": 2, "accelerator": "cpu", "devices": 1, "threads": 1,
        },
    }
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                config[section][key].update(value)
            else:
                config[section][key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_run(folder: Path, config: dict) -> Path:
    cfg = write_config(folder.parent / f"{folder.name}.yaml", config)
    assert brims("train", str(cfg), "--run-dir", str(folder), "--no-progress") == 0
    return folder


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    """A finished BRIMs run (uninterrupted): the reference for the other tests."""
    return train_run(tmp_path_factory.mktemp("runs") / "brims", tiny_config(data_dir))


# ---- brims train, end to end --------------------------------------------------------------------


def test_train_writes_the_run_folder(finished_run, data_dir):
    run = finished_run
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv", "metrics.json"):
        assert (run / name).is_file(), f"{name} missing from the run folder"
    assert load_config(run / "config.yaml") == load_config(base=tiny_config(data_dir))
    for name in ("learning_curves.png", "accuracy_by_resolution.png", "module_activity.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC, f"{name} is not a PNG"

    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == TOTAL_STEPS
    read_checkpoint(run / "checkpoints" / "best.ckpt")

    log = (run / "logs" / "metrics.csv").read_text()
    header = log.splitlines()[0].split(",")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(header)


def test_metrics_count_every_test_image(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert set(metrics["resolution"]) == {"6", "7"}
    assert set(metrics["noise"]) == {"gaussian-0.3", "flip-0.05"}
    for name, result in [*metrics["resolution"].items(), *metrics["noise"].items()]:
        assert result["images"] == TEST_IMAGES, f"{name}: {result['images']} images, the test split has {TEST_IMAGES}"
        correct = result["acc"] * TEST_IMAGES
        assert abs(correct - round(correct)) < 1e-9 and 0 <= result["acc"] <= 1
    assert metrics["train_resolution"] == 6 and metrics["model"] == "brims"
    assert 0 <= metrics["val_acc"] <= 1


def test_metrics_match_an_independent_evaluation(finished_run, data_dir):
    """The reported accuracy at each resolution is what best.ckpt scores on all test images."""
    from brims_experiments.data.images import load_image_split
    from brims_experiments.tasks.seqimage import make_sequences

    metrics = json.loads((finished_run / "metrics.json").read_text())
    _config, model, _ = load_trained(finished_run)
    split = load_image_split("mnist", "test", data_dir)
    for size in (6, 7):
        with torch.no_grad():
            logits = model(make_sequences(split.images, size, binarize=True))  # (N, K) in one batch
        correct = (logits.argmax(-1) == split.labels).sum().item()
        assert metrics["resolution"][str(size)]["acc"] == correct / TEST_IMAGES


# ---- resuming after kill -9 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, data_dir) -> tuple[Path, int]:
    """The same config as ``finished_run``, killed with SIGKILL mid-training, then resumed.

    Returns the run folder and the step of the checkpoint the resume started from.
    """
    folder = tmp_path_factory.mktemp("resume") / "brims"
    cfg = write_config(folder.parent / "brims.yaml", tiny_config(data_dir))
    # Kill mid-way through the second epoch.
    killed_at = kill_training(["train", str(cfg), "--run-dir", str(folder), "--no-progress"], folder,
                              STEPS_PER_EPOCH + 2)
    assert 0 < killed_at < TOTAL_STEPS, f"the kill left a checkpoint at step {killed_at} of {TOTAL_STEPS}"
    assert not (folder / "metrics.json").exists()
    # The same command, on the run folder, resumes.
    assert brims("train", str(folder), "--no-progress") == 0
    return folder, killed_at


def test_resume_after_kill_reaches_the_same_step(resumed_run, finished_run):
    folder, killed_at = resumed_run
    assert STEPS_PER_EPOCH < killed_at < TOTAL_STEPS  # resumed mid-epoch, not from an epoch boundary
    reference = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(folder / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == TOTAL_STEPS
    assert resumed["epoch"] == reference["epoch"]
    assert json.loads((folder / "metrics.json").read_text())["resolution"]["6"]["images"] == TEST_IMAGES
    # The killed session keeps its time up to its last checkpoint save (of last.ckpt, where the
    # resumed session started, or of a later best.ckpt).
    train_time = json.loads((folder / "train_time.json").read_text())
    killed, resumed = train_time["sessions"]
    assert (killed["from_step"], killed["ended"]) == (0, False) and killed["to_step"] >= killed_at
    assert (resumed["from_step"], resumed["to_step"], resumed["ended"]) == (killed_at, TOTAL_STEPS, True)
    assert killed["seconds"] > 0 and resumed["seconds"] > 0
    assert train_time["seconds"] == pytest.approx(killed["seconds"] + resumed["seconds"], abs=0.11)


def test_resume_after_kill_gives_the_same_weights(resumed_run, finished_run):
    """Data order and RNG (dropout) are restored: the resumed run equals the uninterrupted one."""
    folder, _ = resumed_run
    reference = weights(finished_run / "checkpoints" / "last.ckpt")
    resumed = weights(folder / "checkpoints" / "last.ckpt")
    assert reference.keys() == resumed.keys()
    differing = {k: (reference[k] - resumed[k]).abs().max().item() for k in reference
                 if not torch.equal(reference[k], resumed[k])}
    assert not differing, f"weights differ from the uninterrupted run: {differing}"


def test_training_a_finished_run_again_does_no_steps(finished_run, tmp_path):
    run = shutil.copytree(finished_run, tmp_path / "again")
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")
    log_before = (run / "logs" / "metrics.csv").read_text()
    assert brims("train", str(run), "--no-progress") == 0
    after = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert after["global_step"] == before["global_step"] == TOTAL_STEPS
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), f"{key} changed although the run was finished"
    assert log_rows(run) == log_rows(finished_run) and log_before.count("\n") > 2  # the log is kept whole


def test_a_finished_run_can_be_extended_and_resumed_with_other_threads(finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "longer")
    capsys.readouterr()
    assert brims("train", str(run), "--no-progress", "--set", f"train.epochs={EPOCHS + 1}", "train.threads=2") == 0
    out = capsys.readouterr().out
    assert f"changed for this resume: train.epochs: {EPOCHS} -> {EPOCHS + 1}" in out
    assert "changed for this resume: train.threads: 1 -> 2" in out
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == (EPOCHS + 1) * STEPS_PER_EPOCH
    assert load_config(run / "config.yaml").train.epochs == EPOCHS + 1
    rows = log_rows(run)
    assert [row[:2] for row in rows][: len(log_rows(finished_run))] == [row[:2] for row in log_rows(finished_run)]
    assert max(row[0] for row in rows) >= EPOCHS * STEPS_PER_EPOCH  # the new epoch is logged after the old ones


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=0.5", "train.lr would change the run itself: start a new run"),
    (f"train.epochs={EPOCHS - 1}", "would shrink the budget"),
    ("train.max_steps=5", "would shrink the budget"),  # from 0, no limit
])
def test_a_resume_refuses_what_changes_the_run(finished_run, tmp_path, capsys, override, message):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = (run / "config.yaml").read_text()
    assert brims("train", str(run), "--no-progress", "--set", override) == 2
    assert message in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_resuming_refuses_another_run_dir(finished_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        brims("train", str(finished_run), "--run-dir", str(tmp_path / "other"))
    assert exit_info.value.code == 2
    assert "a run folder resumes in place" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def log_rows(run: Path) -> list[tuple[int, tuple[str, ...], tuple[float, ...]]]:
    """Each row of the run's CSV log: its step, the metrics it holds and their values."""
    rows = []
    for row in read_log_rows(run / "logs" / "metrics.csv"):
        keys = tuple(sorted(key for key in row if key != STEPS_COLUMN))
        rows.append((row[STEPS_COLUMN], keys, tuple(row[key] for key in keys)))
    return sorted(rows)


@pytest.fixture(scope="module")
def twice_resumed_run(tmp_path_factory, data_dir) -> Path:
    """Killed with SIGKILL twice (in the first and the second epoch), then resumed to the end."""
    folder = tmp_path_factory.mktemp("resume-twice") / "brims"
    cfg = write_config(folder.parent / "brims.yaml", tiny_config(data_dir))
    first = kill_training(["train", str(cfg), "--run-dir", str(folder), "--no-progress"], folder, STEPS_PER_EPOCH // 2)
    second = kill_training(["train", str(folder), "--no-progress"], folder, first + STEPS_PER_EPOCH)
    assert 0 < first < second < TOTAL_STEPS
    assert brims("train", str(folder), "--no-progress") == 0
    return folder


def test_a_twice_resumed_run_logs_every_step_exactly_once(twice_resumed_run, finished_run):
    """Each resume replays the steps after its checkpoint: their rows replace the killed session's,
    and no row of an earlier session is lost (Lightning's CSV logger deleted the file on resume)."""
    rows, reference = log_rows(twice_resumed_run), log_rows(finished_run)
    assert [row[:2] for row in rows] == [row[:2] for row in reference]
    assert len({row[:2] for row in rows}) == len(rows)  # no step and metric twice
    for ours, theirs in zip(rows, reference):
        assert ours[2] == pytest.approx(theirs[2], rel=1e-6), ours


# ---- run-folder and command-line checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [({"train": {"lr": 0.02}}, "train.lr"), ({"model": {"core": {"kind": "brims-no-top-down"}}}, "model.core.kind")],
    ids=["train.lr", "model.core.kind"],
)
def test_run_folder_with_a_different_config(tmp_path, data_dir, capsys, change, field):
    run = tmp_path / "run"
    run.mkdir()
    original = load_config(base=tiny_config(data_dir))
    (run / "config.yaml").write_text(original.to_yaml())
    other = write_config(tmp_path / "other.yaml", tiny_config(data_dir, **change))
    assert brims("train", str(other), "--run-dir", str(run), "--no-progress") == 2
    message = capsys.readouterr().err
    assert "different config" in message
    assert field in message, f"the error does not name {field}: {message}"
    assert load_config(run / "config.yaml") == original
    assert not (run / "checkpoints").exists()


def test_folder_without_config_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        brims("train", str(tmp_path))
    assert exit_info.value.code == 2
    assert "config.yaml" in capsys.readouterr().err


def test_missing_data_fails_before_any_checkpoint(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    cfg = write_config(tmp_path / "c.yaml", tiny_config(empty))
    run = tmp_path / "run"
    assert brims("train", str(cfg), "--run-dir", str(run), "--no-progress") == 2
    message = capsys.readouterr().err
    assert "brims fetch mnist" in message
    assert not list(run.rglob("*.ckpt")) and not (run / "checkpoints").exists()


# ---- foreign and broken checkpoints ----------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls ``os.system`` (creating ``marker``), as a hostile file could."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad_checkpoints(folder: Path, best: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    paths = {name: folder / f"{name}.ckpt" for name in ("truncated", "foreign", "code-zip", "code-pickle")}
    paths["truncated"].write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    torch.save({"a": 1}, paths["foreign"])
    torch.save({"state_dict": {}, "brims": _RunsCode(folder / "code-ran")}, paths["code-zip"])
    paths["code-pickle"].write_bytes(pickle.dumps({"brims": _RunsCode(folder / "code-ran")}))  # legacy format
    return paths


@pytest.mark.parametrize("kind", ["truncated", "foreign", "code-zip", "code-pickle"])
def test_bad_checkpoints_are_refused(finished_run, tmp_path, capsys, kind):
    paths = _bad_checkpoints(tmp_path / "bad" / "checkpoints", finished_run / "checkpoints" / "best.ckpt")
    with pytest.raises(CheckpointError):
        read_checkpoint(paths[kind])
    out = tmp_path / "out"
    assert brims("test", str(paths[kind]), "--no-progress", "--device", "cpu", "--out", str(out)) == 2
    assert str(paths[kind]) in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints" / "code-ran").exists(), "loading a checkpoint ran code"
    assert not (out / "metrics.json").exists()


def test_resume_from_a_truncated_last_checkpoint_is_refused(finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    assert brims("train", str(run), "--no-progress") == 2
    assert "last.ckpt" in capsys.readouterr().err


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")


def test_a_quick_run_tests_on_the_first_test_images_only(tmp_path, data_dir):
    """data.test_limit (0, all images, by default) makes a short run's test phase short too."""
    run = train_run(tmp_path / "quick", tiny_config(data_dir, data={"test_limit": 40}, train={"epochs": 1}))
    metrics = json.loads((run / "metrics.json").read_text())
    counts = [m["images"] for part in ("resolution", "noise") for m in metrics[part].values()]
    assert counts and set(counts) == {40}


def tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    """The steps of every scalar in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logger_beside_the_csv_log(tmp_path, data_dir):
    run = train_run(tmp_path / "tb", tiny_config(data_dir, train={"epochs": 2, "logger": "tensorboard"}))
    scalars = tensorboard_scalars(run / "logs" / "tensorboard")
    assert "train/loss" in scalars and "val/acc" in scalars
    assert log_rows(run)  # the CSV log is written all the same (the figures read it)


def test_load_run_gives_the_trained_model_and_its_core(finished_run):
    from brims import BRIMs
    from brims_experiments import load_run

    run = load_run(finished_run)
    best = read_checkpoint(finished_run / "checkpoints" / "best.ckpt")
    assert run.checkpoint == finished_run / "checkpoints" / "best.ckpt" and not run.model.training
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, best["state_dict"][f"model.{name}"]), name
    assert isinstance(run.core, BRIMs) and run.core is run.model.core.network
    output, _state = run.core(torch.randn(5, 2, run.core.config.input_size))
    assert output.shape == (5, 2, run.core.config.hidden_sizes[-1])
    assert load_run(finished_run / "checkpoints" / "best.ckpt").config == run.config
    with pytest.raises(CheckpointError):
        load_run(finished_run / "checkpoints" / "missing.ckpt")


def test_brims_test_on_a_finished_run(finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "metrics.json").unlink()
    assert brims("test", str(run), "--no-progress", "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "| run |" in out
    ignore = {"test_seconds": 0, "checkpoint": ""}
    # The finished run was tested on the default device (a GPU where there is one): equal up to float noise.
    assert_same_results(json.loads((run / "metrics.json").read_text()) | ignore,
                        json.loads((finished_run / "metrics.json").read_text()) | ignore)


def test_brims_test_of_a_checkpoint_outside_a_run_folder_needs_out(finished_run, tmp_path, capsys):
    """It wrote two folders up (ckpts/a/b/good.ckpt into ckpts/a/); now it asks where, and says where it wrote."""
    loose = tmp_path / "ckpts" / "a" / "b" / "good.ckpt"
    loose.parent.mkdir(parents=True)
    shutil.copy(finished_run / "checkpoints" / "best.ckpt", loose)
    assert brims("test", str(loose), "--no-progress", "--device", "cpu") == 2
    assert "is not in the checkpoints/ folder of a run folder: give --out FOLDER" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ckpts").rglob("*")) == ["a", "b", "good.ckpt"]  # nothing written
    out = tmp_path / "results"
    assert brims("test", str(loose), "--no-progress", "--device", "cpu", "--out", str(out)) == 0
    assert f"metrics and figures written to {out}" in capsys.readouterr().out
    assert (out / "metrics.json").is_file() and list(out.glob("*.png"))
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "metrics.json").unlink()
    assert brims("test", str(run / "checkpoints" / "best.ckpt"), "--no-progress", "--device", "cpu") == 0
    assert f"metrics and figures written to {run}" in capsys.readouterr().out
    assert (run / "metrics.json").is_file()


def assert_same_results(ours, theirs, where="metrics"):
    """Equal structure and values; floats equal to a relative 1e-5."""
    if isinstance(ours, float) or isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-5), where
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_same_results(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_results(a, b, f"{where}[{index}]")
    else:
        assert ours == theirs, where


# ---- the resumable sampler ---------------------------------------------------------------------------


def test_sampler_resumes_mid_epoch():
    full = ResumableBatchSampler(size=50, batch_size=4, seed=3)
    for epoch in (0, 2):
        full.set_epoch(epoch)
        uninterrupted = list(full)
        assert len(uninterrupted) == len(full) == 12
        for done in (0, 1, 5, 12):
            sampler = ResumableBatchSampler(size=50, batch_size=4, seed=3)
            sampler.load_state_dict({"epoch": epoch, "batches_done": done})
            sampler.set_epoch(epoch)
            assert list(sampler) == uninterrupted[done:]
            sampler.set_epoch(epoch)
            assert list(sampler) == uninterrupted, "the skip must apply to one iteration only"


def test_sampler_skip_applies_to_its_epoch_only():
    sampler = ResumableBatchSampler(size=40, batch_size=4, seed=0)
    sampler.set_epoch(1)
    epoch_one = list(sampler)
    sampler.load_state_dict({"epoch": 0, "batches_done": 3})
    assert list(sampler) == epoch_one  # a state for another epoch does not cut this one


def test_sampler_state_after_resuming_keeps_the_resume_point():
    """A checkpoint taken right after a resume (before a batch is trained) must not rewind to 0."""
    sampler = ResumableBatchSampler(size=40, batch_size=4, seed=0)
    sampler.set_epoch(2)
    sampler.load_state_dict({"epoch": 2, "batches_done": 4})
    batches = iter(sampler)
    next(batches)
    assert sampler.state_dict() == {"epoch": 2, "batches_done": 4}


def test_sampler_orders_differ_by_epoch_and_seed_and_cover_the_data():
    sampler = ResumableBatchSampler(size=40, batch_size=5, seed=0)
    first = list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(40))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(ResumableBatchSampler(size=40, batch_size=5, seed=1)) != first


def test_sampler_shards_are_disjoint_and_equal():
    shards = [list(ResumableBatchSampler(size=53, batch_size=4, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 53 // 2 // 4
    flat = [{i for batch in shard for i in batch} for shard in shards]
    assert not flat[0] & flat[1]
    assert all(len(batch) == 4 for shard in shards for batch in shard)


def test_sampler_without_a_full_batch_is_an_error():
    with pytest.raises(ValueError, match="no full batch"):
        ResumableBatchSampler(size=3, batch_size=4, seed=0)


# ---- DDP on CPU -----------------------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    import yaml

    from brims_experiments.train.config import load_config
    from brims_experiments.train.module import ExperimentModule
    from brims_experiments.train.run import make_trainer

    out = Path(sys.argv[2])


    class SaveWeights(L.Callback):
        def on_train_end(self, trainer, pl_module):
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save({"state_dict": state, "global_step": trainer.global_step, "world_size": trainer.world_size},
                       out / f"rank{trainer.global_rank}.pt")


    torch.set_num_threads(1)
    config = load_config(sys.argv[1])
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    module = ExperimentModule(config)
    datamodule = module.task.datamodule()
    trainer = make_trainer(config, out / "run", progress=False)
    trainer.callbacks.append(SaveWeights())
    trainer.fit(module, datamodule=datamodule)
    """
)


@pytest.mark.slow  # about 30 s: each of the two processes imports Lightning
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, data_dir):
    config = tiny_config(data_dir, train={"epochs": 1, "devices": 2, "strategy": "ddp", "checkpoint_every": 2})
    cfg = write_config(tmp_path / "ddp.yaml", config)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "LOCAL_RANK", "MASTER_", "WORLD_SIZE"))}
    result = subprocess.run([sys.executable, str(script), str(cfg), str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = TRAIN_LIMIT // 2 // BATCH  # each rank trains on its half
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["global_step"] == steps
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), f"{key} differs between the ranks"


# ---- brims compare --------------------------------------------------------------------------------------


def test_compare_two_finished_runs(finished_run, tmp_path, data_dir, capsys):
    lstm_config = tiny_config(data_dir, model={"core": {"kind": "lstm"}}, train={"epochs": 1})
    lstm = train_run(tmp_path / "lstm", lstm_config)
    assert not (lstm / "module_activity.png").exists()  # no modules to show
    capsys.readouterr()
    plot = tmp_path / "comparison.png"
    assert brims("compare", str(finished_run), str(lstm), "--plot", str(plot)) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["run", "model", "params", "best val_acc", "6x6 acc %", "7x7 acc %", "gaussian-0.3 acc %",
                      "flip-0.05 acc %"]
    assert set(lines[1].replace("|", "")) <= set("-")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == {finished_run.name, lstm.name}
    for run in (finished_run, lstm):
        metrics = json.loads((run / "metrics.json").read_text())
        cells = rows[run.name]
        assert cells[1] == metrics["model"]
        assert cells[4] == f"{100 * metrics['resolution']['6']['acc']:.1f}"
        assert cells[7] == f"{100 * metrics['noise']['flip-0.05']['acc']:.1f}"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    # Without --plot the figure is named after the runs it compares: another comparison beside it
    # does not replace it, and running the same one again says that it replaced its figure.
    assert brims("compare", str(finished_run), str(lstm)) == 0
    first = finished_run.parent / f"comparison_{finished_run.name}_vs_{lstm.name}.png"
    assert f"plot: {first}\n" in capsys.readouterr().out and first.read_bytes()[:8] == PNG_MAGIC
    assert brims("compare", str(finished_run)) == 0
    assert (finished_run.parent / f"comparison_{finished_run.name}.png").is_file() and first.is_file()
    capsys.readouterr()
    assert brims("compare", str(finished_run), str(lstm)) == 0
    assert f"plot: {first} (replaced the earlier one)" in capsys.readouterr().out


def test_comparison_of_many_runs_gets_a_short_unique_name(tmp_path):
    from brims_experiments.train.commands import comparison_path

    many = [str(tmp_path / f"a-long-run-folder-name-{i}") for i in range(8)]
    name = comparison_path(many).name
    assert name.startswith("comparison_a-long-run-folder-name-0_and_7_more_") and len(name) < 80
    other = many[:7] + [str(tmp_path / "another-long-run-folder-name")]
    assert comparison_path(other).name != name  # same first run, same count: the hash tells them apart


def test_compare_needs_finished_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        brims("compare", str(tmp_path))
    assert exit_info.value.code == 2
    assert "metrics.json" in capsys.readouterr().err



def test_the_triton_backend_trains_to_the_torch_backends_weights(data_dir, tmp_path):
    """One short run on each backend (Triton's kernels in its interpreter here, hence 3x3 images and
    2 steps): the same dropout draws, so the same weights and test metrics, to float32 rounding."""
    small = {"train_resolution": 3, "test_resolutions": [4], "train_limit": 2 * BATCH, "validation_size": 16,
             "test_limit": 16}
    runs = {}
    for backend in ("torch", "triton"):
        core = {"brims": {**tiny_config(data_dir)["model"]["core"]["brims"], "backend": backend}}
        config = tiny_config(data_dir, data=small, model={"core": core}, train={"epochs": 1})
        runs[backend] = train_run(tmp_path / backend, config)
    expected, got = (weights(runs[b] / "checkpoints" / "last.ckpt") for b in ("torch", "triton"))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    expected_metrics, got_metrics = (json.loads((runs[b] / "metrics.json").read_text()) for b in runs)
    for part in ("resolution", "noise"):
        assert got_metrics[part].keys() == expected_metrics[part].keys()
        for condition, result in expected_metrics[part].items():
            assert got_metrics[part][condition]["acc"] == result["acc"], condition
            assert got_metrics[part][condition]["loss"] == pytest.approx(result["loss"], rel=1e-4), condition
    assert got_metrics["val_acc"] == expected_metrics["val_acc"]


def test_the_set_help_names_exactly_the_fields_a_resume_may_change(capsys):
    """`brims train --help` builds without the train extra, so it cannot import run_folder's lists:
    its text is checked against them here."""
    import re

    from brims_experiments.run_folder import BUDGET_FIELDS, RESUMABLE_FIELDS

    with pytest.raises(SystemExit):
        brims("train", "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    on_a_folder = help_text.split("on a run folder", 1)[1].split("--no-progress", 1)[0]
    assert re.findall(r"\b(?:train|ppo)\.\w+", on_a_folder) == [*RESUMABLE_FIELDS, *BUDGET_FIELDS]
