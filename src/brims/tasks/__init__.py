"""Benchmarks of the BRIMs and RIMs papers, one module per task: data, head, loss, metrics."""

from brims.tasks.copying import (
    CopyingBatch,
    CopyingMetrics,
    CopyingModel,
    CopyingTaskConfig,
    copying_loss,
    copying_metrics,
    evaluate_copying,
    make_copying_batch,
    predict,
)

__all__ = [
    "CopyingBatch",
    "CopyingMetrics",
    "CopyingModel",
    "CopyingTaskConfig",
    "copying_loss",
    "copying_metrics",
    "evaluate_copying",
    "make_copying_batch",
    "predict",
]
