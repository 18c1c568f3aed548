"""Benchmarks of the BRIMs and RIMs papers, one module per task: data, head, loss, metrics."""

from brims_experiments.tasks.copying import (
    CopyingBatch,
    CopyingMetrics,
    CopyingTaskConfig,
    copy_scores,
    copying_loss,
    copying_metrics,
    make_copying_batch,
)

__all__ = [
    "CopyingBatch",
    "CopyingMetrics",
    "CopyingTaskConfig",
    "copy_scores",
    "copying_loss",
    "copying_metrics",
    "make_copying_batch",
]
