"""Language modelling (``task: lm``): next-token prediction on a fetched corpus with the state
carried across windows, tested on the whole test split, clean and with noisy inputs. Model:
:mod:`brims_experiments.tasks.language`; corpora: :mod:`brims_experiments.data.corpora`."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from brims_experiments.config_files import positive_int, require
from brims_experiments.experiments.generated import TEST_SEED
from brims_experiments.tasks.language import LanguageModel, detach_state, move_state, state_from_plain, state_to_plain
from brims_experiments.train.config import ExperimentConfig, is_number, list_field
from brims_experiments.train.datamodule import TextDataModule, TextWindows
from brims_experiments.train.supervised import SupervisedExperiment
from brims_experiments.train.tasks import markdown_table


@dataclass(frozen=True)
class LanguageDataConfig:
    """Language modelling on a fetched corpus (``brims fetch <corpus>``).

    Attributes:
        corpus: ``austen`` (word level), ``shakespeare`` or ``gcide`` (character level).
        seq_len: steps of truncated back-propagation; the state is carried across windows.
        batch_size: contiguous training streams (split across ranks under DDP).
        eval_batch_size: streams of the validation and test evaluation.
        noise: shares of input tokens replaced at random in the robustness test (targets stay clean).
    """

    corpus: str = "austen"
    seq_len: int = 35
    batch_size: int = 20
    eval_batch_size: int = 10
    noise: tuple[float, ...] = (0.05, 0.2)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from brims_experiments.data.corpora import CORPORA

        list_field(self, "noise", is_number, "shares of tokens in (0, 1]", "[0.05, 0.2] (or [] for none)")
        require(self.corpus in CORPORA, f"data.corpus must be one of {sorted(CORPORA)}, got {self.corpus!r}")
        positive_int("data.seq_len", self.seq_len)
        positive_int("data.batch_size", self.batch_size)
        positive_int("data.eval_batch_size", self.eval_batch_size)
        for share in self.noise:
            require(0 < share <= 1,
                    f"data.noise entries must be shares in (0, 1], got {share!r}")


class LanguageTask(SupervisedExperiment):
    """Next-token prediction with the state carried across windows (truncated BPTT).

    A batch is ``(inputs (B, L), targets (B, L), window index)``; window 0 starts a pass over
    the text, so the carried state is reset there (separately for training and evaluation).
    """

    name = "lm"
    data_config = LanguageDataConfig
    model_fields = ("dropout", "tie_weights")
    learning_metric = "bpc"
    summary_file = "test_by_noise.png"
    activity_header = 0.6  # a row of upright tokens

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        from brims_experiments.data.corpora import corpus_info

        self.level = corpus_info(config.data.corpus).level
        self.states: dict[bool, Any] = {True: None, False: None}  # by model.training
        self._vocabulary: Any = None
        self._corpus: Any = None

    def vocabulary(self) -> Any:
        """The corpus's vocabulary, read and verified once (every checkpoint records its fingerprint)."""
        from brims_experiments.data.corpora import load_vocabulary

        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.config.data.corpus, self.config.data.data_dir)
        return self._vocabulary

    def corpus(self) -> Any:
        """The verified splits, read once for the test evaluation and the activity figure."""
        from brims_experiments.data.corpora import load_corpus

        if self._corpus is None:
            self._corpus = load_corpus(self.config.data.corpus, self.config.data.data_dir)
        return self._corpus

    def build_model(self) -> nn.Module:
        model = self.config.model
        return LanguageModel(model.core, len(self.vocabulary()), model.embedding_size, model.dropout,
                             model.tie_weights)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets, index = batch
        if int(index) == 0:
            self.states[model.training] = None
        logits, state = model(inputs, move_state(self.states[model.training], inputs.device))  # (B, L, V)
        self.states[model.training] = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss, ({"bpc": loss.detach() / math.log(2)} if self.level == "char" else {})

    def datamodule(self) -> L.LightningDataModule:
        return TextDataModule(self.config.data, self.config.train.seed)

    def check_data(self) -> None:
        self.vocabulary()

    @torch.no_grad()
    def _score(self, model: nn.Module, clean: Tensor, inputs: Tensor, device: torch.device, label: str,
               progress: bool) -> dict[str, float]:
        """Mean next-token cross-entropy over every target of ``clean`` (in ``eval_batch_size``
        streams, state carried), reading ``inputs`` (the same text, possibly corrupted)."""
        from brims_experiments.data.corpora import batchify

        data = self.config.data
        windows = TextWindows(batchify(clean, data.eval_batch_size), data.seq_len,
                              batchify(inputs, data.eval_batch_size))
        model.eval()
        state, total, count = None, 0.0, 0
        for index in tqdm(range(len(windows)), desc=label, disable=not progress, leave=False):
            window_inputs, window_targets, _ = windows[index]
            logits, state = model(window_inputs.to(device), state)  # (B, L, V)
            total += F.cross_entropy(logits.flatten(0, 1).float(), window_targets.to(device).flatten(),
                                     reduction="sum").item()
            count += window_targets.numel()
        loss = total / count
        measure = {"bpc": loss / math.log(2)} if self.level == "char" else {"ppl": math.exp(loss)}
        return {"loss": loss, **measure, "tokens": count}

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        from brims_experiments.data.corpora import corrupt_tokens

        corpus = self.corpus()
        results: dict[str, Any] = {"level": self.level, "vocabulary": len(corpus.vocab)}
        for split in ("valid", "test"):
            ids = corpus.split(split)
            results[split] = self._score(model, ids, ids, device, split, progress)
        results["noise"] = {}
        for share in self.config.data.noise:
            generator = torch.Generator().manual_seed(TEST_SEED)
            noisy = corrupt_tokens(corpus.test, share, len(corpus.vocab), generator)
            results["noise"][f"{share:g}"] = self._score(model, corpus.test, noisy, device, f"test, {share:g} noise",
                                                         progress)
        return results

    def activity_input(self) -> tuple[Tensor, str]:
        corpus = self.corpus()
        tokens = corpus.valid[:100].view(1, -1)  # (1, T)
        return tokens, repr(corpus.vocab.decode(tokens[0])[:90])

    def state_dict(self) -> dict[str, Any]:
        return {"train_state": state_to_plain(self.states[True]), "vocabulary": self.vocabulary().fingerprint()}

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        self.vocabulary().check_matches(state.get("vocabulary"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states[True] = state_from_plain(state.get("train_state"))

    def draw_activity_input(self, axes: Any, inputs: Tensor, caption: str, prediction: str) -> None:
        """Each token read, at its step: the same x axis as the activity below."""
        tokens = inputs[0].tolist()
        vocabulary = self.corpus().vocab
        axes[0].set_xlim(-0.5, len(tokens) - 0.5)
        for step, token in enumerate(tokens):
            text = vocabulary.decode([token]).replace("\n", "⏎") or " "
            axes[0].text(step, 0.0, text, rotation=90, ha="center", va="bottom", fontsize=6, family="monospace")
        axes[0].set_title(f"validation text, one token per step: {caption}", fontsize=9)
        axes[0].axis("off")
        axes[1].axis("off")

    @classmethod
    def fetched_data(cls, config: ExperimentConfig) -> tuple[str, str | None] | None:
        return config.data.corpus, config.data.data_dir

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        names = {"austen": "Jane Austen (words)", "shakespeare": "Shakespeare (characters)",
                 "gcide": "the GCIDE dictionary (characters)"}
        return names.get(str(metrics.get("dataset")), str(metrics.get("dataset", metrics.get("task"))))

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        """Perplexity (word level) or bits per character on the whole validation and test splits,
        and on the test split with a share of its input tokens replaced at random."""
        metric = "bpc" if runs[0]["level"] == "char" else "ppl"
        shares = list(dict.fromkeys(share for run in runs for share in run["noise"]))
        header = ["run", "model", "params", f"valid {metric}", f"test {metric}"] + [f"test {metric}, {s} noise"
                                                                                     for s in shares]
        rows = []
        for i, run in enumerate(runs):
            cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                     f"{run['valid'][metric]:.3f}", f"{run['test'][metric]:.3f}"]
            cells += [f"{run['noise'][s][metric]:.3f}" if s in run["noise"] else "-" for s in shares]
            rows.append(cells)
        return markdown_table(header, rows)

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        """The test error (bits per character or perplexity) on the clean test split (share 0) and at
        each share of input tokens replaced at random, on a log axis."""
        import matplotlib.pyplot as plt

        from brims_experiments.train.plots import loss_axis

        figure, axes = plt.subplots(1, 1, figsize=(5.5, 3.8), squeeze=False)
        axis = axes[0][0]
        drawn: list[float] = []
        ylabel = ""
        for metrics in runs:
            metric = "bpc" if metrics["level"] == "char" else "ppl"
            ylabel = f"test {'bits per character' if metric == 'bpc' else 'perplexity'}"
            points = {0.0: metrics["test"], **{float(share): result for share, result in metrics["noise"].items()}}
            conditions = sorted(points)
            values = [points[c][metric] for c in conditions]
            drawn += values
            axis.plot(conditions, values, "o-", label=metrics.get("label", metrics["model"]))
        axis.set_xlabel("share of input tokens replaced at random")
        loss_axis(axis, drawn, ylabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        return figure


def generate_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``brims generate``: sample text from a trained language model."""
    from brims_experiments.tasks.language import sample
    from brims_experiments.train.run import load_trained_task

    config, task, model, _ = load_trained_task(args.path)
    if not isinstance(task, LanguageTask):
        parser.error(f"{args.path} is a {config.task} run; generate needs a language model (task lm)")
    vocabulary = task.vocabulary()  # checked against the checkpoint when it was loaded
    start = "\n" if vocabulary.level == "char" else "<eos>"  # the start of a paragraph
    prompt = vocabulary.encode(args.prompt) if args.prompt else torch.tensor([vocabulary.id_of(start)])
    if prompt.numel() == 0:
        parser.error(f"the prompt {args.prompt!r} holds no token of the vocabulary")
    drawn = sample(model, prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed))
    separator = " " if args.prompt and vocabulary.level == "word" else ""
    print(args.prompt + separator + vocabulary.decode(drawn))
    return 0


EXPERIMENT = LanguageTask
