"""Progress of a training run: one bar over the run's whole budget, or without a bar a line every
few steps (step, loss, speed, time left) on the console and in ``logs/progress.log``."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar


def run_total_steps(trainer: L.Trainer) -> float:
    """The run's budget in optimiser steps (``max_steps`` or ``epochs x batches``; inf if unknown)."""
    return float(trainer.estimated_stepping_batches)


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar, counting the run's steps out of its whole budget (Lightning's counts the
    epoch's batches, so a run stopped by ``train.max_steps`` read ``30/312``, a resumed one ``20/?``)."""

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
    """Without a bar: a line every ``every_seconds`` (and at the end) to stderr and ``logs/progress.log``."""

    def __init__(self, run_dir: Path, every_seconds: float = 30.0) -> None:
        self.path = run_dir / "logs" / "progress.log"
        self.every_seconds = every_seconds
        self._last_time = self._start_time = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = self._start_time = time.perf_counter()
        self._start_step = trainer.global_step
        self._write(trainer, f"training from step {trainer.global_step} of {self._total(trainer)}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if now - self._last_time >= self.every_seconds:
            self._last_time = now
            self._write(trainer, self._line(trainer, now))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, self._line(trainer, time.perf_counter()) + " (training done)")

    def _total(self, trainer: L.Trainer) -> str:
        total = run_total_steps(trainer)
        return "?" if math.isinf(total) else str(int(total))

    def _line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, run_total_steps(trainer)
        rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step}/{self._total(trainer)}", f"epoch {trainer.current_epoch}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} steps/s")
        if rate > 0 and not math.isinf(total):
            parts.append(f"about {_duration((total - step) / rate)} left")
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
