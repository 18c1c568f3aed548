"""Data for Lightning (sequential images, generated tasks), with a training order that resumes mid-epoch.

The training order is a function of ``(seed, epoch)`` only, and the loader reports how many
batches of the current epoch were trained; Lightning stores that in every checkpoint
(``state_dict``/``load_state_dict``), so a resumed run continues with exactly the batches
it had not seen yet instead of replaying the epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Sampler

from brims_experiments.data.images import load_image_split
from brims_experiments.tasks.seqimage import make_sequences

log = logging.getLogger(__name__)


class TokenDataset(Dataset):
    """Fixed inputs ``(N, ...)`` (e.g. tokens ``(N, T, C)``) with their targets ``(N, ...)``."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        self.tokens = tokens
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.labels[index]


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled full batches per epoch, sharded over ranks, able to skip batches already trained.

    Each rank takes every ``world_size``-th index of the epoch's permutation (the same
    permutation on every rank), truncated so all ranks step equally often.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches_done = 0
        self._skip: tuple[int, int] | None = None
        if len(self) == 0:
            raise ValueError(f"{size} training examples make no full batch of {batch_size} on {world_size} rank(s)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def epoch_order(self) -> torch.Tensor:
        """The dataset indices of this epoch, in order (the same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        share = self.epoch_order()[self.rank :: self.world_size][: len(self) * self.batch_size]
        batches = share.view(len(self), self.batch_size).tolist()
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = min(self._skip[1], len(batches))
            log.info("resuming epoch %d after batch %d", self.epoch, start)
        self._skip = None
        self.batches_done = start
        yield from batches[start:]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = (int(state["epoch"]), int(state["batches_done"]))


class FreshBatchSampler(ResumableBatchSampler):
    """For generated data: epoch ``e`` reads examples ``e*size .. (e+1)*size - 1``, never seen
    before (each example is generated from its own index, so the data is endless and the
    order still resumes exactly)."""

    def epoch_order(self) -> torch.Tensor:
        return torch.arange(self.epoch * self.size, (self.epoch + 1) * self.size)


def own_generator_loader(cls: type[DataLoader], dataset: Dataset, **options: Any) -> DataLoader:
    """A loader with its own generator: a ``DataLoader`` otherwise draws a seed from torch's
    global generator at every pass, which would shift the dropout draws of a resumed run."""
    return cls(dataset, generator=torch.Generator(), **options)


def validation_loader(dataset: Dataset, batch_size: int, **options: Any) -> DataLoader:
    """The validation split in order."""
    return own_generator_loader(DataLoader, dataset, batch_size=batch_size, shuffle=False, **options)


def rank_and_world(module: L.LightningDataModule) -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 outside a Trainer)."""
    return (module.trainer.global_rank, module.trainer.world_size) if module.trainer else (0, 1)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position Lightning saves in checkpoints and restores."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class TrackTrainedBatches(Callback):
    """Records, before checkpoints are written, how many batches of the epoch were trained.

    Lightning runs checkpoint callbacks after all others, so the count is current when
    ``last.ckpt`` is saved (counting batches *fetched* would be one ahead: Lightning
    prefetches).
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sampler = trainer.train_dataloader.batch_sampler
        if isinstance(sampler, ResumableBatchSampler):
            sampler.batches_done = batch_idx + 1


class SeqImageDataModule(L.LightningDataModule):
    """Train and validation splits at the training resolution (validation held out, seeded)."""

    def __init__(self, config: Any, seed: int) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.train_set: TokenDataset | None = None
        self.val_set: TokenDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        config = self.config
        split = load_image_split(config.dataset, "train", config.data_dir)
        if config.validation_size >= len(split):
            raise ValueError(f"data.validation_size={config.validation_size} leaves no training images "
                             f"(the training split has {len(split)})")
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(self.seed))
        val_index = order[: config.validation_size]
        train_index = order[config.validation_size :]
        if config.train_limit:
            train_index = train_index[: config.train_limit]
        tokens = make_sequences(split.images, config.train_resolution, config.binarized)  # (N, T, C)
        self.train_set = TokenDataset(tokens[train_index], split.labels[train_index])
        self.val_set = TokenDataset(tokens[val_index], split.labels[val_index])
        log.info("%s: %d training and %d validation sequences of %d steps", config.dataset, len(self.train_set),
                 len(self.val_set), tokens.shape[1])

    def train_dataloader(self) -> ResumableLoader:
        assert self.train_set is not None
        sampler = ResumableBatchSampler(len(self.train_set), self.config.batch_size, self.seed, *rank_and_world(self))
        return own_generator_loader(ResumableLoader, self.train_set, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return validation_loader(self.val_set, self.config.eval_batch_size)


# The fixed validation set of a generated task (apart from every training example's seed).
VALIDATION_SEED = 1_000_000_007


class IndexedExamples(Dataset):
    """Endless generated data: example ``j`` is drawn by ``draw(1, generator seeded by j)``,
    so any example can be regenerated from its index alone (and resumes need no state)."""

    def __init__(self, draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]], seed: int) -> None:
        self.draw = draw
        self.seed = seed

    def __len__(self) -> int:  # only the sampler's indices are ever asked for
        raise TypeError("IndexedExamples has no length: it is endless")

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.draw(1, self.generator(index))
        return inputs[0], targets[0]


DrawEach = Callable[[list[torch.Generator]], tuple[torch.Tensor, torch.Tensor]]


class BatchedExamples(IndexedExamples):
    """The same endless examples, a batch at a time: ``draw_each(generators)`` draws example
    ``i`` from ``generators[i]`` in one vectorised call (the loader asks ``__getitems__`` for
    a whole batch), so ``draw(count, generator)`` is ``draw_each([generator] * count)``."""

    def __init__(self, draw_each: DrawEach, seed: int) -> None:
        super().__init__(lambda count, generator: draw_each([generator] * count), seed)
        self.draw_each = draw_each

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = self.draw_each([self.generator(index) for index in indices])
        return list(zip(inputs, targets))


class GeneratedDataModule(L.LightningDataModule):
    """A generated task: fresh training sequences every epoch, a fixed seeded validation set.

    ``draw(count, generator)`` returns ``(inputs (count, ...), targets (count, ...))``; with
    ``draw_each`` (see :class:`BatchedExamples`) training batches are drawn in one call.
    """

    def __init__(self, config: Any, seed: int,
                 draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
                 draw_each: DrawEach | None = None) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.draw = draw
        self.draw_each = draw_each
        self.val_set: TokenDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is None:
            generator = torch.Generator().manual_seed(VALIDATION_SEED + self.seed)
            self.val_set = TokenDataset(*self.draw(self.config.validation_sequences, generator))

    def train_dataloader(self) -> ResumableLoader:
        sampler = FreshBatchSampler(self.config.train_sequences, self.config.batch_size, self.seed,
                                    *rank_and_world(self))
        if self.draw_each is None:
            examples = IndexedExamples(self.draw, self.seed)
        else:
            examples = BatchedExamples(self.draw_each, self.seed)
        return own_generator_loader(ResumableLoader, examples, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return validation_loader(self.val_set, self.config.eval_batch_size)


class InOrderBatchSampler(ResumableBatchSampler):
    """Items in their natural order every epoch (the windows of a text, whose state carries on)."""

    def epoch_order(self) -> torch.Tensor:
        return torch.arange(self.size)


class TextWindows(Dataset):
    """Window ``i`` of ``(T, B)`` streams: ``(inputs (B, L), targets (B, L), i)``.

    ``inputs_stream`` may differ from ``stream`` (corrupted inputs, clean targets).
    """

    def __init__(self, stream: torch.Tensor, seq_len: int, inputs_stream: torch.Tensor | None = None) -> None:
        if stream.shape[0] < 2:
            raise ValueError(f"a stream of {stream.shape[0]} steps has no input/target pair")
        self.stream = stream
        self.inputs_stream = stream if inputs_stream is None else inputs_stream
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (self.stream.shape[0] - 1 + self.seq_len - 1) // self.seq_len  # ceil: the last window may be short

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        start = index * self.seq_len
        stop = min(start + self.seq_len, self.stream.shape[0] - 1)
        return self.inputs_stream[start:stop].t(), self.stream[start + 1 : stop + 1].t(), index  # (B, L) x2


def _single(items: list[Any]) -> Any:
    """Collate for samplers that yield one-item batches of ready-made windows."""
    inputs, targets, index = items[0]
    return inputs, targets, torch.tensor(index)


class TextDataModule(L.LightningDataModule):
    """Training windows in order over ``batch_size`` streams (each rank reads its own streams),
    validation windows in order over ``eval_batch_size`` streams."""

    def __init__(self, config: Any, seed: int) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.train_set: TextWindows | None = None
        self.val_set: TextWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        from brims_experiments.data.corpora import batchify, load_corpus

        if self.train_set is not None:
            return
        corpus = load_corpus(self.config.corpus, self.config.data_dir)
        rank, world = rank_and_world(self)
        if self.config.batch_size % world:
            raise ValueError(f"data.batch_size={self.config.batch_size} streams do not split over {world} ranks")
        streams = batchify(corpus.train, self.config.batch_size)[:, rank::world]  # (T, B / world)
        self.train_set = TextWindows(streams, self.config.seq_len)
        self.val_set = TextWindows(batchify(corpus.valid, self.config.eval_batch_size), self.config.seq_len)

    def train_dataloader(self) -> ResumableLoader:
        assert self.train_set is not None
        sampler = InOrderBatchSampler(len(self.train_set), 1, self.seed)
        return own_generator_loader(ResumableLoader, self.train_set, batch_sampler=sampler, collate_fn=_single)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return validation_loader(self.val_set, 1, collate_fn=_single)
