"""A run folder, end to end: train (or resume), select the best checkpoint, test, plot.

Layout of ``runs/<name>/``::

    config.yaml              the resolved config (what ``brims train <run folder>`` resumes)
    .lock                    held by the process training or testing the run (one at a time)
    checkpoints/last.ckpt    every ``train.checkpoint_every`` steps, after every validation, and at the end
    checkpoints/best.ckpt    best validation score (the task's monitor)
    logs/metrics.csv         the CSV log (train loss/acc per step, validation), kept across resumes
    metrics.json             every test resolution and noise level, from best.ckpt
    *.png                    learning curves, accuracy by resolution, module activity
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from brims_experiments.checkpoints import FORMAT_KEY, AtomicCheckpointIO, CheckpointError, read_checkpoint
from brims_experiments.config_files import ConfigError
from brims_experiments.data.store import atomic_write_text
from brims_experiments.devices import check_device
from brims_experiments.run_folder import (
    BUDGET_FIELDS,
    METRICS_FILE,
    STEPS_COLUMN,
    TRAIN_TIME_FILE,
    TrainingSession,
    check_checkpoint_config,
    check_run_dir,
    differing_fields,
    prepare_run_dir,
    read_json,
    read_log_rows,
    results_folder,
    tensorboard_logger,
)
from brims_experiments.run_lock import RunFolderLock
from brims_experiments.train.config import ExperimentConfig, load_config
from brims_experiments.train.datamodule import TrackTrainedBatches
from brims_experiments.train.module import ExperimentModule
from brims_experiments.train.progress import ProgressLines, RunProgressBar
from brims_experiments.train.tasks import Task, make_task

log = logging.getLogger(__name__)



class RunLog(Logger):
    """The run folder's ``logs/metrics.csv``, one row per ``log_metrics`` call, kept across resumes.

    Every save rewrites the file atomically from the rows in memory: the earlier sessions' rows
    (read at the first save) and this session's. A resumed session replays the steps after the
    checkpoint it resumed from, so a row of an earlier session is replaced by this session's row
    of the same step and metrics: every logged step is in the file exactly once.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.path = run_dir / "logs" / "metrics.csv"
        self._rows: dict[tuple[int, frozenset[str]], dict[str, Any]] = {}
        self._read = False

    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The config is the run folder's config.yaml; nothing more to keep."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._read_earlier_sessions()
        row = {key: float(value) for key, value in metrics.items()}
        # Lightning counts the step of a row from 0; the log counts steps trained, from 1.
        row[STEPS_COLUMN] = step + 1 if step is not None else len(self._rows)
        self._rows[(row[STEPS_COLUMN], frozenset(metrics))] = row

    @rank_zero_only
    def save(self) -> None:
        self._read_earlier_sessions()
        keys = sorted(set().union(*self._rows.values())) if self._rows else [STEPS_COLUMN]
        rows = sorted(self._rows.values(), key=lambda row: row[STEPS_COLUMN])  # stable: the order logged within a step
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def _read_earlier_sessions(self) -> None:
        if self._read:
            return
        self._read = True
        if not self.path.is_file():
            return
        for row in read_log_rows(self.path):
            self._rows[(row[STEPS_COLUMN], frozenset(row) - {STEPS_COLUMN})] = row


def make_trainer(config: ExperimentConfig, run_dir: Path, progress: bool = True, from_step: int = 0,
                 task: Task | None = None) -> L.Trainer:
    """Lightning's trainer for the run folder; ``from_step``: the step a resume starts from; ``task``:
    the run's task (its monitor selects ``best.ckpt``), built from ``config`` when not given."""
    train = config.train
    loggers: list[Logger] = [RunLog(run_dir)]
    if train.logger == "tensorboard":
        loggers.append(tensorboard_logger(run_dir, from_step))
    task = task if task is not None else make_task(config)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=task.monitor, mode=task.mode,
                           save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False)
    last = SaveLast(run_dir / "checkpoints" / "last.ckpt", train.checkpoint_every, train.validate_every)
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        precision=train.precision,
        gradient_clip_val=train.grad_clip or None,
        val_check_interval=train.validate_every or None,
        check_val_every_n_epoch=None if train.validate_every else 1,
        callbacks=[TrackTrainedBatches(), best, last, SayHowToResume(run_dir),
                   RunProgressBar() if progress else ProgressLines(run_dir)],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=progress,  # the bar is RunProgressBar; without it, ProgressLines
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )


class SaveLast(Checkpoint):
    """``checkpoints/last.ckpt``: every ``every`` steps, right after every validation, and at the last step.

    The selection state (the best score and which checkpoint holds it) lives in the ``best``
    callback's state, which every save carries with the weights, so a resume selects exactly as
    the uninterrupted run would, wherever a kill falls:

    - after every validation (Lightning runs checkpoint callbacks in order: ``best`` first), the
      save holds the score just validated;
    - a step that validates is saved after its validation only. Lightning resumes *after* the
      step of a checkpoint, so a save between a step and its validation would skip that
      validation on resume, and a later, worse score could replace ``best.ckpt``.

    A kill between ``best.ckpt`` and this save replays the steps since the previous save; the
    replay computes the same scores (the data order and random state are in the checkpoint), so
    ``best.ckpt`` is rewritten with the same contents.

    - the last step of an epoch is saved at the epoch's end (``on_train_epoch_end``), where
      Lightning counts the epoch as done: a save at its last batch resumes into a state that
      Lightning reads as a finished epoch and trains the next one short.

    The save at the last step is marked ``finished`` (:class:`ExperimentModule`). It is taken inside
    the loop, like every other save, so that a larger budget resumes from it exactly as from a kill
    (a save after ``fit`` returns holds Lightning's end-of-training loop state, from which a resume
    logs its steps one off and in the next epoch).
    """

    def __init__(self, path: Path, every: int, validate_every: int) -> None:
        self.path, self.every, self.validate_every = path, every, validate_every

    @staticmethod
    def _ends_epoch(trainer: L.Trainer) -> bool:
        return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def _validates_after(self, trainer: L.Trainer) -> bool:
        if self.validate_every:
            return trainer.global_step % self.validate_every == 0
        return self._ends_epoch(trainer)  # validation at the end of each epoch

    def _is_last_step(self, trainer: L.Trainer) -> bool:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        return self._ends_epoch(trainer) and trainer.current_epoch + 1 >= trainer.max_epochs

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.finished = self._is_last_step(trainer)
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = trainer.global_step % self.every == 0 or self._is_last_step(trainer)
        if due and not self._validates_after(trainer) and not self._ends_epoch(trainer):
            self._save(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self._ends_epoch(trainer):
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._ends_epoch(trainer):  # not an epoch cut short by max_steps: its last save came at its last step
            self._save(trainer, pl_module)


def train(run_dir: str | Path, config: ExperimentConfig | None = None, progress: bool = True,
          test_after: bool = True, announce: Callable[[ExperimentConfig], None] | None = None) -> dict[str, Any] | None:
    """Train a new run in ``run_dir`` or resume the one there from ``last.ckpt``; then test it.

    A finished run (its last checkpoint saved at the end of the same budget) is left untouched:
    its ``metrics.json`` is returned, or written by testing if a kill came before it. A larger
    budget (``--set train.max_steps=...``) goes on from the end as the uninterrupted longer run.
    ``announce(config)`` is called once every check has passed, before the run starts.
    """
    run_dir = Path(run_dir)
    if config is None:
        config = prepare_run_dir(run_dir, None, load_config)  # resume with the folder's own config
    else:
        check_run_dir(run_dir, config, load_config)  # a folder of another run, before anything is built
    # Everything that can refuse the start, before the folder becomes a run: a failed start leaves
    # nothing that blocks the corrected command.
    task = make_task(config)  # the run's one task: the module, the trainer and the test use it
    task.check_data()  # missing or corrupted data
    asks_gpu = config.train.accelerator in ("gpu", "cuda")
    if asks_gpu:
        check_device("cuda", f"train.accelerator={config.train.accelerator}: the device")
    on_gpu = asks_gpu or (config.train.accelerator == "auto" and torch.cuda.is_available())
    config.model.core.check_device("cuda" if on_gpu else "cpu", "train.accelerator=gpu")
    with RunFolderLock(run_dir):
        return _train_holding_lock(run_dir, config, progress, test_after, announce, task)


def _train_holding_lock(run_dir: Path, config: ExperimentConfig, progress: bool, test_after: bool,
                        announce: Callable[[ExperimentConfig], None] | None, task: Task) -> dict[str, Any] | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    metrics_path = run_dir / METRICS_FILE
    resume = last if last.is_file() else None
    resumed_step = None
    if resume is not None:
        # A clear error for a corrupted file before Lightning touches it.
        checkpoint = read_checkpoint(resume)
        check_checkpoint_config(checkpoint, config, resume)
        if _finished_with_budget(checkpoint, config):
            if metrics_path.is_file():
                log.info("%s is finished; its metrics stand (`brims test` re-evaluates)", run_dir)
                return read_json(metrics_path, "the run's test metrics")
            return test(run_dir, progress=progress, lock=False, task=task) if test_after else None
        resumed_step = checkpoint.get("global_step")
        log.info("resuming %s from %s (step %s)", run_dir, resume, resumed_step)
    if announce is not None:
        announce(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    module = ExperimentModule(config, task)  # the model: its size errors (e.g. tied embeddings)
    if resume is not None:
        module.task.check_checkpoint(checkpoint[FORMAT_KEY].get("task_state", {}))
    datamodule = module.task.datamodule()
    # Lightning refuses a precision or strategy here (and a logger whose package is missing).
    trainer = make_trainer(config, run_dir, progress, from_step=resumed_step or 0, task=task)
    config = prepare_run_dir(run_dir, config, load_config)
    session = TrainingSession(run_dir)
    session.earlier_sessions()  # a corrupted record refuses the start, not the first checkpoint
    trainer.callbacks.append(RecordSessionAtCheckpoints(session, from_step=resumed_step or 0))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if not trainer.is_global_zero:
        return None
    session.record(ended=True, from_step=resumed_step or 0, to_step=trainer.global_step)
    return test(run_dir, progress=progress, lock=False, task=task) if test_after else None


def _finished_with_budget(checkpoint: dict[str, Any], config: ExperimentConfig) -> bool:
    """Whether ``checkpoint`` was saved at the end of training with ``config``'s budget."""
    header = checkpoint[FORMAT_KEY]
    budget = [name for name in differing_fields(config.as_dict(), header["config"]) if name in BUDGET_FIELDS]
    return bool(header.get("finished")) and not budget


class SayHowToResume(Callback):
    """On Ctrl-C Lightning stops gracefully (and exits with status 1): say how to go on."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            log.warning("interrupted: %s keeps its last checkpoint; resume with `brims train %s`",
                        self.run_dir, self.run_dir)


class RecordSessionAtCheckpoints(Callback):
    """Brings the session's entry in ``train_time.json`` up to date whenever a checkpoint is saved."""

    def __init__(self, session: TrainingSession, from_step: int) -> None:
        self.session, self.from_step = session, from_step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A session that trained no step (a finished run started again) leaves no entry.
        if trainer.is_global_zero and trainer.global_step > self.from_step:
            self.session.record(from_step=self.from_step, to_step=trainer.global_step)


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[ExperimentConfig, Any, dict[str, Any]]:
    """``(config, model in eval mode, checkpoint)`` from a run folder (its best) or a ``.ckpt``."""
    config, _, model, checkpoint = load_trained_task(path, device)
    return config, model, checkpoint


def load_trained_task(path: str | Path, device: torch.device | str = "cpu",
                      task: Task | None = None) -> tuple[ExperimentConfig, Task, Any, dict[str, Any]]:
    """:func:`load_trained`, with the task that built the model (its data read and checked once).
    ``task``: the task of the run just trained, used again when the checkpoint holds its config."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    checkpoint = read_checkpoint(path)
    if task is not None and checkpoint[FORMAT_KEY]["config"] == task.config.as_dict():
        config = task.config
    else:
        try:
            config = load_config(base=checkpoint[FORMAT_KEY]["config"])
        except ConfigError as error:
            raise CheckpointError(f"{path}: its config is not valid here ({error})") from None
        task = make_task(config)
    task.check_checkpoint(checkpoint[FORMAT_KEY].get("task_state", {}))
    model = task.build_model()
    weights = {k.removeprefix("model."): v for k, v in checkpoint.get("state_dict", {}).items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model of its config ({str(error).splitlines()[0]})") from None
    return config, task, model.to(device).eval(), checkpoint


def test(path: str | Path, device: str | None = None, progress: bool = True,
         out: str | Path | None = None, lock: bool = True, task: Task | None = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given ``.ckpt``) on every test setting; write metrics and
    plots to ``out``, or to the run folder (:func:`brims_experiments.run_folder.results_folder`), holding
    that folder's lock (``lock=False``: the caller holds it). ``task``: the task of the run just trained."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such run folder or checkpoint")
    torch_device = check_device(device, "--device") if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = results_folder(path, out)  # checked before the evaluation, not after it
    with RunFolderLock(folder) if lock else contextlib.nullcontext():
        return _test_into(path, folder, torch_device, progress, task)


def _test_into(path: Path, folder: Path, torch_device: torch.device, progress: bool,
               task: Task | None = None) -> dict[str, Any]:
    from brims_experiments.train import plots

    run_dir = path if path.is_dir() else path.parent.parent  # where its train_time.json may be
    torch.set_flush_denormal(True)  # as in training: decaying recurrent states hit slow denormal arithmetic
    config, task, model, checkpoint = load_trained_task(path, torch_device, task)
    started = time.perf_counter()
    results = task.evaluate(model, torch_device, progress)
    metrics = {
        "task": config.task,
        "dataset": getattr(config.data, "dataset", config.task),
        "model": config.model.core.kind,
        "checkpoint": str(path if path.is_file() else path / "checkpoints" / "best.ckpt"),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "parameters": sum(p.numel() for p in model.parameters()),
        **results,
        "test_seconds": time.perf_counter() - started,
    }
    best_score = _best_validation(checkpoint, task.monitor)
    if best_score is not None:
        metrics[task.monitor.replace("/", "_")] = best_score  # e.g. val_acc: the best validation score
    train_time = run_dir / TRAIN_TIME_FILE
    if train_time.is_file():
        metrics["train"] = read_json(train_time, "the run's training time")
    atomic_write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2))
    plots.plot_run(folder, task, model, metrics)
    metrics["written_to"] = str(folder)
    return metrics


def _best_validation(checkpoint: dict[str, Any], monitor: str) -> float | None:
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("monitor") == monitor and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None

