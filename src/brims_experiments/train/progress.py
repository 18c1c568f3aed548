"""Progress of a training run: one bar over the run's whole budget, or without a bar a line every
few steps (step, loss, speed, time left) on the console and in ``logs/progress.log``."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar


class _DropLightningNoise(logging.Filter):
    """Drops Lightning's advertising ("💡 Tip: ... litlogger / litmodels") and its report of TPUs and
    HPUs a CPU or CUDA run never has, logged through its ``rank_zero`` loggers."""

    NOISE = ("💡 Tip:", "TPU available:", "HPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.NOISE)


_NOISE_FILTER = _DropLightningNoise()


def quiet_lightning() -> None:
    """Keep Lightning's console output to what a user of ``brims train`` acts on, so that our progress
    lines stand out: no advertising, no TPU/HPU report, no model-summary table (our results table
    gives the parameter count), and no FutureWarning about torch's ``LeafSpec`` that Lightning's own
    ``_pytree`` triggers (nothing a user can act on). Called when a progress callback is made, that
    is before the ``Trainer`` that logs them; idempotent."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
    logging.getLogger("lightning.pytorch.callbacks.model_summary").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def run_total_steps(trainer: L.Trainer) -> float:
    """The run's budget in optimiser steps (``max_steps`` or ``epochs x batches``; inf if unknown)."""
    return float(trainer.estimated_stepping_batches)


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar, counting the run's steps out of its whole budget (Lightning's counts the
    epoch's batches, so a run stopped by ``train.max_steps`` read ``30/312``, a resumed one ``20/?``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quiet_lightning()
        super().__init__(*args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        total = run_total_steps(trainer)
        bar.total = None if math.isinf(total) else int(total)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description(f"training (epoch {trainer.current_epoch})")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()


class ProgressLines(Callback):
    """Without a bar: a line every ``every_seconds`` (and at the end) to stderr and ``logs/progress.log``.

    The speed, and the time left from it, are measured over the last :attr:`WINDOW` logged intervals
    (about 5 minutes at the default 30 s) and never before the end of the first step: the first steps
    of a compiled core (and the first validation) compile for minutes, and counting them from the start
    made a 20-minute run read "about 98 h left"; a compile within the window is forgotten once the
    window has passed it. The epoch shown is the one the last step was trained in (Lightning counts
    an epoch cut short by ``max_steps`` as done, so a run that stopped in epoch 0 ended on "epoch 1").
    ``clock``: seconds, of ``time.perf_counter``'s kind.
    """

    WINDOW = 10

    def __init__(self, run_dir: Path, every_seconds: float = 30.0, clock: Callable[[], float] = time.perf_counter) -> None:
        quiet_lightning()
        self.path = run_dir / "logs" / "progress.log"
        self.every_seconds = every_seconds
        self.clock = clock
        self._last_time = 0.0
        self._timed: deque[tuple[float, int]] = deque(maxlen=self.WINDOW)  # (time, step): first step's end, lines
        self._epoch: int | None = None  # the epoch of the last trained batch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = self.clock()
        self._timed.clear()
        self._epoch = None
        self._write(trainer, f"training from step {trainer.global_step} of {self._total(trainer)}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = self.clock()
        self._epoch = trainer.current_epoch
        if not self._timed:  # the first step's end: what came before it (compiling, set-up) is not timed
            self._timed.append((now, trainer.global_step))
        if now - self._last_time >= self.every_seconds:
            self._last_time = now
            self._write(trainer, self._line(trainer, now))
            if trainer.global_step > self._timed[-1][1]:
                self._timed.append((now, trainer.global_step))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, self._line(trainer, self.clock()) + " (training done)")

    def _total(self, trainer: L.Trainer) -> str:
        total = run_total_steps(trainer)
        return "?" if math.isinf(total) else str(int(total))

    def rate(self, step: int, now: float) -> float | None:
        """Steps per second over the window (see the class); None before a step after the first one."""
        if not self._timed:
            return None
        since, from_step = self._timed[0]
        return (step - from_step) / (now - since) if step > from_step and now > since else None

    def _line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, run_total_steps(trainer)
        epoch = self._epoch if self._epoch is not None else trainer.current_epoch
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step}/{self._total(trainer)}", f"epoch {epoch}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        rate = self.rate(step, now)
        if rate is not None:
            parts.append(f"{rate:.2f} steps/s")
            if rate > 0 and not math.isinf(total):
                parts.append(f"about {_duration(max(total - step, 0) / rate)} left")
        return ", ".join(parts)

    def _write(self, trainer: L.Trainer, line: str) -> None:
        if not trainer.is_global_zero:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        print(stamped, file=sys.stderr, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(stamped + "\n")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
