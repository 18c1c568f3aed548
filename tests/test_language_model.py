"""Language modelling on the harness, on small generated corpora (never fetched text)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import brims, kill_training

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.cli import main
from brims_experiments.config_files import ConfigError
from brims_experiments.data.corpora import batchify, prepare_corpus
from brims_experiments.data.vocab import VocabularyMismatchError
from brims_experiments.tasks.cores import CoreConfig
from brims_experiments.tasks.language import LanguageModel, detach_state, sample, state_from_plain, state_to_plain
from brims_experiments.train.config import load_config
from brims_experiments.train.datamodule import InOrderBatchSampler, TextWindows
from brims_experiments.train.run import load_trained

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "off", "to", "see", "the", "dog", "who",
         "was", "sleeping"]
TINY = {"hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4}


def tiny_core(kind: str, **options) -> CoreConfig:
    """The tiny core of each kind (RIMs: one layer of the stack's total size)."""
    sizes = {"hidden_sizes": [16], "num_modules": [2], "top_k": [1]} if kind == "rims" else {}
    return CoreConfig(kind=kind, brims={**TINY, **sizes, **options})


def documents(seed: int, count: int = 3, paragraphs: int = 40) -> list[list[str]]:
    rng = random.Random(seed)
    return [[line for _ in range(paragraphs) for line in (" ".join(rng.choice(WORDS) for _ in range(10)) + ".", "")]
            for _ in range(count)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    prepare_corpus("austen", documents(0), root)
    return root


@pytest.mark.parametrize("kind", ["brims", "rims", "brims-no-top-down", "lstm"])
def test_language_model_shapes_and_state(kind):
    model = LanguageModel(tiny_core(kind), vocab_size=11, embedding_size=6, dropout=0.0, tie=False)
    tokens = torch.randint(0, 11, (3, 7))
    logits, state = model(tokens)
    assert logits.shape == (3, 7, 11)
    plain = state_to_plain(state)
    assert plain["kind"] == ("lstm" if kind == "lstm" else "brims")
    more = torch.randint(0, 11, (3, 4))
    model.eval()
    torch.testing.assert_close(model(more, state_from_plain(plain))[0], model(more, state)[0], rtol=0, atol=0)
    plain = state_to_plain(detach_state(state))
    assert all(not t.requires_grad for t in plain["h"] + plain["c"])


@pytest.mark.parametrize("kind", ["brims", "lstm"])
def test_carrying_the_state_equals_reading_the_whole_text(kind):
    torch.manual_seed(0)
    model = LanguageModel(tiny_core(kind, attention_dropout=0.0), 11, 6, 0.0, False).double()
    model.eval()
    tokens = torch.randint(0, 11, (2, 9))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-12)


def test_tied_weights_are_one_parameter_and_need_equal_sizes():
    model = LanguageModel(CoreConfig(kind="lstm", brims={"hidden_sizes": (6, 6)}), 11, 6, 0.1, tie=True)
    assert model.readout.weight is model.embedding.weight
    with pytest.raises(ValueError, match="tie_weights"):
        LanguageModel(CoreConfig(kind="lstm", brims={"hidden_sizes": (8, 8)}), 11, 6, 0.1, tie=True)


def test_sample_is_seeded_and_checks_its_arguments():
    model = LanguageModel(tiny_core("brims"), 11, 6, 0.0, False)
    prompt = torch.tensor([1, 2])
    first = sample(model, prompt, 12, 0.8, torch.Generator().manual_seed(3))
    again = sample(model, prompt, 12, 0.8, torch.Generator().manual_seed(3))
    assert first.shape == (12,) and torch.equal(first, again) and int(first.max()) < 11
    for length, temperature, bad_prompt in [(0, 1.0, prompt), (3, 0.0, prompt), (3, 1.0, torch.tensor([]))]:
        with pytest.raises(ValueError):
            sample(model, bad_prompt.long(), length, temperature, torch.Generator())


def test_text_windows_cover_every_target_once_in_order():
    stream = batchify(torch.arange(103), 4)  # (25, 4)
    windows = TextWindows(stream, seq_len=7)
    targets = torch.cat([windows[i][1] for i in range(len(windows))], dim=1)  # (B, 24)
    assert torch.equal(targets, stream[1:].t())
    inputs = torch.cat([windows[i][0] for i in range(len(windows))], dim=1)
    assert torch.equal(inputs, stream[:-1].t())
    sampler = InOrderBatchSampler(len(windows), 1, seed=0)
    sampler.load_state_dict({"epoch": 0, "batches_done": 2})
    assert [b[0] for b in sampler] == list(range(2, len(windows)))


@pytest.mark.parametrize(
    "override, field",
    [("data.corpus=ptb", "data.corpus"), ("data.seq_len=0", "data.seq_len"), ("data.noise=[1.5]", "data.noise"),
     ("model.dropout=1.0", "model.dropout")],
)
def test_language_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=["task=lm", override])


def test_dropout_belongs_to_language_models_only():
    with pytest.raises(ConfigError, match="task lm only"):
        load_config(overrides=["model.dropout=0.1"])


def lm_config(corpus_dir: Path, **train) -> dict:
    return {
        "task": "lm",
        "data": {"corpus": "austen", "seq_len": 8, "batch_size": 4, "eval_batch_size": 3, "noise": [0.3],
                 "data_dir": str(corpus_dir)},
        "model": {"embedding_size": 8, "dropout": 0.1, "tie_weights": True, "core": {"kind": "brims", "compile": False, "brims": TINY}},
        "train": {"epochs": 1, "max_steps": 12, "lr": 0.01, "checkpoint_every": 4, "validate_every": 6,
                  "accelerator": "cpu", "devices": 1, "threads": 1, **train},
    }


@pytest.fixture(scope="module")
def finished_lm_run(corpus_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    (folder / "lm.yaml").write_text(yaml.safe_dump(lm_config(corpus_dir)))
    assert brims("train", str(folder / "lm.yaml"), "--run-dir", str(folder / "run"), "--no-progress") == 0
    return folder / "run"


def test_lm_run_scores_every_token(finished_lm_run, corpus_dir):
    metrics = json.loads((finished_lm_run / "metrics.json").read_text())
    assert metrics["task"] == "lm" and metrics["level"] == "word" and metrics["global_step"] == 12
    test_ids = torch.load(corpus_dir / "austen" / "test.pt", weights_only=True)
    steps = test_ids.numel() // 3
    assert metrics["test"]["tokens"] == (steps - 1) * 3  # every target of the 3 eval streams
    for result in [metrics["valid"], metrics["test"], metrics["noise"]["0.3"]]:
        assert result["ppl"] == pytest.approx(torch.tensor(result["loss"]).exp().item())
    for name in ("learning_curves.png", "module_activity.png", "test_by_noise.png", "checkpoints/last.ckpt"):
        assert (finished_lm_run / name).is_file()


def test_generate_prints_sampled_words(finished_lm_run, capsys):
    assert main(["generate", str(finished_lm_run), "--prompt", "the cat", "--length", "15", "--seed", "1"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("the cat ") and len(text.split()) >= 10
    assert set(text.replace(".", " ").split()) <= set(WORDS) | {"<unk>"}


def test_a_changed_vocabulary_is_refused(finished_lm_run, corpus_dir, tmp_path):
    other = tmp_path / "other"
    prepare_corpus("austen", [["zebra quagga okapi gnu eland ibex yak emu .", ""] * 40] * 3, other)
    config = load_config(finished_lm_run / "config.yaml", [f"data.data_dir={other}"])
    assert config.data.data_dir == str(other)
    checkpoint = finished_lm_run / "checkpoints" / "best.ckpt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["brims"]["config"]["data"]["data_dir"] = str(other)
    moved = tmp_path / "moved.ckpt"
    torch.save(payload, moved)
    with pytest.raises(VocabularyMismatchError, match="vocabulary"):
        load_trained(moved)


def test_resume_after_kill_continues_the_text_and_its_state(corpus_dir, tmp_path):
    """Killed with SIGKILL mid-epoch and resumed, a run ends with the weights of an uninterrupted
    one: the window position, the carried (detached) recurrent state and the RNG come back from
    the checkpoint. The run crosses an epoch boundary after the resume (the state resets there)."""
    config = lm_config(corpus_dir, epochs=2, max_steps=60, checkpoint_every=2, validate_every=20)
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(config))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert brims("train", str(tmp_path / "lm.yaml"), "--run-dir", str(reference), "--no-progress") == 0
    train_ids = torch.load(corpus_dir / "austen" / "train.pt", weights_only=True)
    windows_per_epoch = len(TextWindows(batchify(train_ids, 4), 8))
    assert 6 < windows_per_epoch < 60 - 6
    killed_at = kill_training(["train", str(tmp_path / "lm.yaml"), "--run-dir", str(resumed), "--no-progress"],
                              resumed, 6)
    assert 0 < killed_at < windows_per_epoch
    assert brims("train", str(resumed), "--no-progress") == 0
    before, after = (read_checkpoint(run / "checkpoints" / "last.ckpt") for run in (reference, resumed))
    assert after["global_step"] == before["global_step"] == 60
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), f"{key} differs from the uninterrupted run"
    assert json.loads((resumed / "metrics.json").read_text())["test"]["tokens"] > 0
