"""The copying task of RIMs (Goyal et al., 2019), generated on the fly.

Protocol (Hochreiter & Schmidhuber, 1997, in the form of Arjovsky et al., 2016, used by RIMs):
a sequence of ``copy_length`` symbols, each drawn uniformly from ``num_classes`` symbol
classes, is followed by ``gap`` blanks and one delimiter; over the next ``copy_length`` steps
the input is blank and the model must output the symbols, in order. Every other step's target
is blank. With the defaults (10 symbols from 8 classes) the vocabulary has 10 tokens::

    token 0                   blank
    tokens 1 .. num_classes   the symbols
    token num_classes + 1     the delimiter

    step      0 .. L-1   L .. L+g-1   L+g          L+g+1 .. 2L+g
    input     symbols    blanks       delimiter    blanks
    target    blanks     blanks       blank        the symbols (in input order)

so a sequence has ``T = 2L + g + 1`` steps (``L = copy_length``, ``g = gap``); Arjovsky et al.'s
``T`` (blanks plus delimiter) is ``g + 1``. RIMs trains at a delay of 50 and tests at 200 to
measure generalisation to longer delays.

Dimension legend: T = time steps, B = batch, V = vocabulary size (``num_classes + 2``),
L = copy_length, H = hidden size of the recurrent core's top layer.

A model that does not remember the symbols can still predict the blanks perfectly and the
symbols at chance: cross-entropy ``log(num_classes)`` on the symbols to copy
(:attr:`CopyingTaskConfig.chance_cross_entropy`), ``L * log(num_classes) / T`` over all steps
(:attr:`CopyingTaskConfig.chance_loss`). Training typically plateaus there first; getting below
it is what shows memory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CopyingTaskConfig:
    """One copying task: how many symbols, from how many classes, over how long a gap.

    Attributes:
        gap: blank steps between the last symbol and the delimiter (``>= 0``).
        copy_length: symbols to remember and reproduce (``>= 1``).
        num_classes: symbol classes the symbols are drawn from (``>= 1``).
    """

    gap: int = 10
    copy_length: int = 10
    num_classes: int = 8

    def __post_init__(self) -> None:
        _check_int("gap", self.gap, 0)
        _check_int("copy_length", self.copy_length, 1)
        _check_int("num_classes", self.num_classes, 1)

    @property
    def blank(self) -> int:
        """Token of the blank input and of the targets outside the copy window."""
        return 0

    @property
    def delimiter(self) -> int:
        """Token that tells the model to start reproducing the symbols."""
        return self.num_classes + 1

    @property
    def vocab_size(self) -> int:
        """Tokens in the input and output vocabulary: blank, the symbols, the delimiter."""
        return self.num_classes + 2

    @property
    def sequence_length(self) -> int:
        """Steps per sequence: ``2 * copy_length + gap + 1``."""
        return 2 * self.copy_length + self.gap + 1

    @property
    def chance_cross_entropy(self) -> float:
        """Cross-entropy on the symbols to copy of a model that does not remember them."""
        return math.log(self.num_classes)

    @property
    def chance_loss(self) -> float:
        """Training loss (all steps) of a model that predicts the blanks but not the symbols."""
        return self.copy_length * self.chance_cross_entropy / self.sequence_length

    def with_gap(self, gap: int) -> CopyingTaskConfig:
        """The same task with another gap (e.g. a longer one, to test generalisation)."""
        return dataclasses.replace(self, gap=gap)


class CopyingBatch(NamedTuple):
    """A batch of copying sequences, time-major.

    ``inputs``: ``(T, B, V)`` float one-hot tokens. ``targets``: ``(T, B)`` long token ids.
    """

    inputs: Tensor
    targets: Tensor


def make_copying_batch(
    config: CopyingTaskConfig,
    batch_size: int,
    generator: torch.Generator,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CopyingBatch:
    """Draw ``batch_size`` sequences of ``config``'s task with ``generator``.

    The same generator state gives the same batch: seed one with
    ``torch.Generator().manual_seed(seed)``. The symbols are drawn on the generator's device,
    then moved to ``device`` (default: the generator's device).

    Returns:
        :class:`CopyingBatch` with ``inputs (T, B, V)`` one-hot of ``dtype`` and
        ``targets (T, B)`` long, ``T = config.sequence_length``, ``V = config.vocab_size``.
    """
    if not isinstance(config, CopyingTaskConfig):
        raise TypeError(f"config must be a CopyingTaskConfig, got {type(config).__name__}")
    _check_int("batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype for the one-hot inputs, got {dtype}")
    length, gap = config.copy_length, config.gap
    symbols = torch.randint(
        1, config.num_classes + 1, (length, batch_size), generator=generator, device=generator.device
    )  # (L, B)
    tokens = torch.full((config.sequence_length, batch_size), config.blank, dtype=torch.long, device=generator.device)
    targets = tokens.clone()  # (T, B)
    tokens[:length] = symbols
    tokens[length + gap] = config.delimiter
    targets[-length:] = symbols
    device = generator.device if device is None else device
    inputs = F.one_hot(tokens, config.vocab_size).to(device=device, dtype=dtype)  # (T, B, V)
    return CopyingBatch(inputs, targets.to(device))


def _check_prediction(logits: Tensor, targets: Tensor) -> None:
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("logits and targets must be tensors")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (T, B, V), got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape (T, B)={tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be token ids of dtype torch.long, got {targets.dtype}")


def copying_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Training loss: mean cross-entropy over every step and example.

    Args:
        logits: ``(T, B, V)`` unnormalised scores.
        targets: ``(T, B)`` token ids.
    """
    _check_prediction(logits, targets)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # over T * B predictions


@dataclass(frozen=True)
class CopyingMetrics:
    """How well a batch was copied; every field is a mean over the batch.

    Attributes:
        loss: cross-entropy over all steps (the training loss).
        copy_cross_entropy: cross-entropy over the ``copy_length`` steps that reproduce the
            symbols (``log(num_classes)`` is chance).
        symbol_accuracy: fraction of those symbols predicted right (argmax).
        sequence_accuracy: fraction of sequences whose symbols are all predicted right.
    """

    loss: float
    copy_cross_entropy: float
    symbol_accuracy: float
    sequence_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def copy_scores(logits: Tensor, targets: Tensor, copy_length: int) -> dict[str, Tensor]:
    """Scores of the symbols to reproduce (the last ``copy_length`` steps), as tensors:
    ``copy_ce`` (cross-entropy; ``log(num_classes)`` is chance), ``symbol_acc`` (argmax right)
    and ``sequence_acc`` (every symbol of a sequence right), each a mean over the batch.

    Args:
        logits: ``(T, B, V)`` unnormalised scores.
        targets: ``(T, B)`` token ids, as made by :func:`make_copying_batch`.
        copy_length: the task's ``copy_length`` (``1 <= copy_length <= T``).
    """
    _check_prediction(logits, targets)
    _check_int("copy_length", copy_length, 1)
    if copy_length > logits.shape[0]:
        raise ValueError(f"copy_length={copy_length} exceeds the sequence length T={logits.shape[0]}")
    copy_logits, copy_targets = logits[-copy_length:], targets[-copy_length:]  # (L, B, V), (L, B)
    correct = copy_logits.argmax(-1) == copy_targets  # (L, B)
    return {
        "copy_ce": F.cross_entropy(copy_logits.flatten(0, 1), copy_targets.flatten()),
        "symbol_acc": correct.float().mean(),
        "sequence_acc": correct.all(0).float().mean(),
    }


@torch.no_grad()
def copying_metrics(logits: Tensor, targets: Tensor, copy_length: int) -> CopyingMetrics:
    """:func:`copy_scores` and the training loss of a prediction, as floats (same arguments)."""
    scores = copy_scores(logits, targets, copy_length)
    return CopyingMetrics(
        loss=copying_loss(logits, targets).item(),
        copy_cross_entropy=scores["copy_ce"].item(),
        symbol_accuracy=scores["symbol_acc"].item(),
        sequence_accuracy=scores["sequence_acc"].item(),
    )
