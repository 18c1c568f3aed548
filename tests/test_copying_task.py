"""The copying task (data, loss, metrics) and the ``brims demo`` command."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brims_experiments.cli import main
from brims_experiments.tasks.copying import (
    CopyingMetrics,
    CopyingTaskConfig,
    copy_scores,
    copying_loss,
    copying_metrics,
    make_copying_batch,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- config --------------------------------------------------------------------------------------


def test_config_derived_sizes():
    config = CopyingTaskConfig(gap=10)
    assert (config.copy_length, config.num_classes) == (10, 8)
    assert config.vocab_size == 10
    assert config.blank == 0 and config.delimiter == 9
    assert config.sequence_length == 10 + 10 + 1 + 10
    assert config.chance_cross_entropy == pytest.approx(math.log(8))
    assert config.chance_loss == pytest.approx(10 * math.log(8) / 31)
    assert config.with_gap(40) == CopyingTaskConfig(gap=40)


@pytest.mark.parametrize(
    "options",
    [{"gap": -1}, {"gap": 1.5}, {"gap": True}, {"copy_length": 0}, {"num_classes": 0}, {"num_classes": "8"}],
)
def test_config_rejects_bad_values(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        CopyingTaskConfig(**options)


# ---- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [0, 1, 7])
def test_batch_shapes_and_types(gap):
    config = CopyingTaskConfig(gap=gap)
    inputs, targets = make_copying_batch(config, 5, generator())
    steps = 2 * config.copy_length + gap + 1
    assert inputs.shape == (steps, 5, config.vocab_size) and inputs.dtype == torch.float32
    assert targets.shape == (steps, 5) and targets.dtype == torch.long
    assert torch.equal(inputs.sum(-1), torch.ones(steps, 5))  # one-hot
    assert make_copying_batch(config, 2, generator(), dtype=torch.float64).inputs.dtype == torch.float64


def test_batch_is_deterministic_by_seed():
    config = CopyingTaskConfig(gap=3)
    first, again = make_copying_batch(config, 16, generator(7)), make_copying_batch(config, 16, generator(7))
    other = make_copying_batch(config, 16, generator(8))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.targets, other.targets)
    stream = generator(7)
    first_draw, second_draw = make_copying_batch(config, 16, stream), make_copying_batch(config, 16, stream)
    assert not torch.equal(first_draw.targets, second_draw.targets)  # a generator moves on


@pytest.mark.parametrize("gap", [0, 5])
def test_batch_layout_and_targets(gap):
    config = CopyingTaskConfig(gap=gap, copy_length=6, num_classes=4)
    inputs, targets = make_copying_batch(config, 32, generator(1))
    tokens = inputs.argmax(-1)  # (T, B)
    length, blank = config.copy_length, config.blank
    symbols = tokens[:length]
    assert symbols.min() >= 1 and symbols.max() <= config.num_classes
    assert len(symbols.unique()) == config.num_classes  # every class is drawn (32 * 6 draws)
    assert (tokens[length : length + gap] == blank).all()
    assert (tokens[length + gap] == config.delimiter).all()
    assert (tokens[length + gap + 1 :] == blank).all()
    assert torch.equal(targets[-length:], symbols)  # the last L targets are the first L inputs
    assert (targets[:-length] == blank).all()


def test_batch_rejects_bad_arguments():
    config = CopyingTaskConfig()
    with pytest.raises(ValueError, match="batch_size"):
        make_copying_batch(config, 0, generator())
    with pytest.raises(ValueError, match="batch_size"):
        make_copying_batch(config, 2.0, generator())
    with pytest.raises(TypeError, match="generator"):
        make_copying_batch(config, 2, 0)
    with pytest.raises(TypeError, match="CopyingTaskConfig"):
        make_copying_batch({"gap": 1}, 2, generator())
    with pytest.raises(ValueError, match="floating-point"):
        make_copying_batch(config, 2, generator(), dtype=torch.long)


# ---- loss and metrics ----------------------------------------------------------------------------


def perfect_logits(targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return 30.0 * F.one_hot(targets, vocab_size).float()  # (T, B, V)


def test_metrics_of_a_perfect_prediction():
    config = CopyingTaskConfig(gap=2)
    _, targets = make_copying_batch(config, 8, generator())
    metrics = copying_metrics(perfect_logits(targets, config.vocab_size), targets, config.copy_length)
    assert isinstance(metrics, CopyingMetrics)
    assert metrics.symbol_accuracy == 1.0 and metrics.sequence_accuracy == 1.0
    assert metrics.loss < 1e-6 and metrics.copy_cross_entropy < 1e-6
    assert set(metrics.as_dict()) == {"loss", "copy_cross_entropy", "symbol_accuracy", "sequence_accuracy"}


def test_metrics_of_wrong_predictions():
    config = CopyingTaskConfig(gap=2)
    batch_size, length = 8, config.copy_length
    _, targets = make_copying_batch(config, batch_size, generator())
    # Every symbol wrong (cyclically shifted class), blanks right.
    wrong = targets.clone()
    wrong[-length:] = wrong[-length:] % config.num_classes + 1
    metrics = copying_metrics(perfect_logits(wrong, config.vocab_size), targets, length)
    assert metrics.symbol_accuracy == 0.0 and metrics.sequence_accuracy == 0.0
    assert metrics.copy_cross_entropy == pytest.approx(30.0, abs=1e-3)
    # One symbol wrong in one sequence.
    almost = targets.clone()
    almost[-1, 3] = almost[-1, 3] % config.num_classes + 1
    metrics = copying_metrics(perfect_logits(almost, config.vocab_size), targets, length)
    assert metrics.symbol_accuracy == pytest.approx(1 - 1 / (length * batch_size))
    assert metrics.sequence_accuracy == pytest.approx(1 - 1 / batch_size)
    # A wrong blank counts in the loss, not in the symbol metrics.
    blank_wrong = targets.clone()
    blank_wrong[0] = config.delimiter
    metrics = copying_metrics(perfect_logits(blank_wrong, config.vocab_size), targets, length)
    assert metrics.sequence_accuracy == 1.0 and metrics.loss > 1.0


def test_loss_is_cross_entropy_on_all_steps():
    config = CopyingTaskConfig(gap=1)
    _, targets = make_copying_batch(config, 3, generator())
    logits = torch.randn(*targets.shape, config.vocab_size, generator=generator(2))
    expected = torch.stack(
        [F.cross_entropy(logits[t, b], targets[t, b]) for t in range(targets.shape[0]) for b in range(3)]
    ).mean()
    assert copying_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    # Uniform logits: chance everywhere.
    uniform = copying_metrics(torch.zeros_like(logits), targets, config.copy_length)
    assert uniform.loss == pytest.approx(math.log(config.vocab_size))
    # Blanks right, symbols uniform over the classes: the task's memoryless reference.
    memoryless = perfect_logits(targets, config.vocab_size)
    memoryless[-config.copy_length :] = -30.0
    memoryless[-config.copy_length :, :, 1 : config.num_classes + 1] = 0.0
    metrics = copying_metrics(memoryless, targets, config.copy_length)
    assert metrics.loss == pytest.approx(config.chance_loss, rel=1e-4)
    assert metrics.copy_cross_entropy == pytest.approx(config.chance_cross_entropy, rel=1e-4)


def test_loss_and_metrics_reject_bad_arguments():
    logits, targets = torch.zeros(5, 2, 10), torch.zeros(5, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="copy_length"):
        copying_metrics(logits, targets, 6)
    with pytest.raises(ValueError, match="copy_length"):
        copying_metrics(logits, targets, 0)
    with pytest.raises(ValueError, match=r"\(T, B, V\)"):
        copying_loss(logits[0], targets)
    with pytest.raises(ValueError, match="targets must have shape"):
        copying_loss(logits, targets[:4])
    with pytest.raises(ValueError, match="torch.long"):
        copying_loss(logits, targets.float())


# ---- the scores the harness logs ------------------------------------------------------------------


def test_copy_scores_are_the_metrics_as_tensors():
    config = CopyingTaskConfig(gap=2)
    _, targets = make_copying_batch(config, 5, generator())
    logits = torch.randn(*targets.shape, config.vocab_size, generator=generator(1), requires_grad=True)
    scores = copy_scores(logits, targets, config.copy_length)
    metrics = copying_metrics(logits, targets, config.copy_length)
    assert scores["copy_ce"].item() == pytest.approx(metrics.copy_cross_entropy)
    assert scores["symbol_acc"].item() == metrics.symbol_accuracy
    assert scores["sequence_acc"].item() == metrics.sequence_accuracy
    scores["copy_ce"].backward()  # a loss on the copied symbols alone can train
    assert logits.grad[: -config.copy_length].abs().sum() == 0 and logits.grad[-config.copy_length :].abs().sum() > 0


# ---- the demo command ----------------------------------------------------------------------------


@pytest.fixture
def restore_torch_globals():
    """``brims demo`` sets process-wide torch options (it is a program); undo them for other tests."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)  # torch's default
    torch.set_rng_state(rng)


TINY = ["--gap", "2", "--eval-gap", "5", "--batch", "8", "--eval-batch", "16", "--log-every", "0.5"]


@pytest.mark.parametrize(
    "core_args", [["--hidden-sizes", "16", "16", "--num-modules", "2", "2", "--top-k", "1", "1"], ["--core", "lstm"]]
)
def test_demo_smoke(core_args, capsys, restore_torch_globals):
    assert main(["demo", "--seconds", "3", "--threads", "1", *TINY, *core_args]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "train loss" in out
    assert "evaluation on 16 fresh sequences" in out
    for name in ("symbol CE", "symbol acc", "sequence acc"):
        assert name in out
    table = out.split("evaluation on", 1)[1].splitlines()
    rows = [line.split() for line in table if line.strip().split(" ")[0].rstrip("*") in {"2", "5"}]
    assert [row[0] for row in rows] == ["2*", "5"]
    for row in rows:  # gap, steps, CE, symbol acc %, sequence acc %
        assert float(row[2]) >= 0 and 0 <= float(row[3].rstrip("%")) <= 100 and 0 <= float(row[4].rstrip("%")) <= 100
    assert ("module activity" in out) == ("--core" not in core_args)


def test_cli_help_and_errors(capsys):
    for argv in (["--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "--seconds" in capsys.readouterr().out
    for argv in ([], ["demo", "--gap", "-1"], ["demo", "--batch", "0"], ["demo", "--core", "lstm", "--top-k", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--hidden-sizes", "10", "10", "--num-modules", "4", "2"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "hidden-sizes" in message and "10" in message and "model.core" not in message
