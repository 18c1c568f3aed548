"""Typed experiment configs: defaults, YAML round trip, ``--set`` overrides, errors naming the field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from brims import BRIMsConfig
from brims_experiments.cli import main
from brims_experiments.config_files import ConfigError, parse_overrides
from brims_experiments.experiments import task_of
from brims_experiments.experiments.seqimage import DataConfig
from brims_experiments.tasks.cores import BRIMS_FIELDS, CoreConfig
from brims_experiments.train.commands import preset_names, resolve_config
from brims_experiments.train.config import ExperimentConfig, ModelConfig, TrainConfig, load_config


def field_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted path of the config: sections and fields (``model``, ``model.core``, ``model.core.kind``)."""
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= field_paths(value, f"{path}.")
    return paths


# The brims options are empty by default (BRIMsConfig's defaults apply); every field of it is a path.
ALL_PATHS = field_paths(ExperimentConfig().as_dict()) | {f"model.core.brims.{name}" for name in BRIMS_FIELDS}


def assert_names_field(message: str, path: str) -> None:
    """The message names ``path`` (``a.b.c`` in full, or ``a.b: ... c``) and no field that does not exist."""
    section, _, leaf = path.rpartition(".")
    named = path in message or (
        bool(section) and message.startswith(f"{section}:") and re.search(rf"\b{re.escape(leaf)}\b", message)
    )
    assert named, f"the error does not name {path}: {message}"
    mentioned = set(re.findall(r"\b(?:data|model|train)(?:\.[a-z_]+)+", message))
    wrong = sorted(p for p in mentioned if p not in ALL_PATHS and not p.startswith(path))
    assert not wrong, f"the error names {wrong}, which are not config fields (the field is {path}): {message}"


@pytest.mark.parametrize("name", ["hidden_sizes", "attention_dropout", "cell"])
def test_a_config_in_the_old_layout_says_what_changed(tmp_path, name):
    """Before brims 0.2 the BRIMs options sat directly under model.core."""
    path = tmp_path / "old.yaml"
    path.write_text(f"model:\n  core:\n    kind: brims\n    {name}: {BRIMsConfig.__dataclass_fields__[name].default!r}\n")
    with pytest.raises(ConfigError, match=rf"model\.core\.{name}: the BRIMs options moved under model\.core\.brims "
                                          rf"in brims 0\.2; write model\.core\.brims\.{name}"):
        load_config(path)


def test_defaults_are_valid():
    config = ExperimentConfig()
    assert load_config() == config
    assert config.data.dataset == "mnist"
    assert config.model.core == CoreConfig()
    assert config.data.all_test_resolutions == (14, 16, 19, 24)


def test_yaml_round_trip(tmp_path):
    config = ExperimentConfig(
        data=DataConfig(dataset="cifar10", train_resolution=16, test_resolutions=(19, 32), noise=("gaussian-0.2",),
                        batch_size=8, data_dir="/somewhere"),
        model=ModelConfig(core=CoreConfig(kind="rims", brims={"cell": "gru", "hidden_sizes": (60,), "num_modules": (6,),
                                                              "top_k": (3,), "communication": False}), embedding_size=12),
        train=TrainConfig(epochs=2, lr=3e-4, devices=2, strategy="ddp", accelerator="cpu"),
    )
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    loaded = load_config(path)
    assert loaded == config
    assert isinstance(loaded.data.test_resolutions, tuple) and isinstance(loaded.model.core.brims["hidden_sizes"], tuple)
    assert loaded.to_yaml() == config.to_yaml()


def test_partial_yaml_keeps_defaults(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  core:\n    kind: lstm\n")
    config = load_config(path)
    assert config.train.epochs == 3 and config.model.core.kind == "lstm"
    assert config.train.lr == TrainConfig().lr and config.model.core.brims_config(1).hidden_sizes == (300, 300)
    assert config.data == DataConfig()


def test_overrides_are_parsed_as_yaml():
    config = load_config(overrides=[
        "data.test_resolutions=[8, 9]",
        "train.epochs=3",
        "train.lr=0.01",
        "model.core.kind=lstm",
        "train.devices=auto",
        "data.noise=[gaussian-0.5]",
        "model.core.brims.communication=false",
    ])
    assert config.data.test_resolutions == (8, 9)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.lr == 0.01
    assert config.model.core.kind == "lstm"
    assert config.train.devices == "auto"
    assert config.data.noise == ("gaussian-0.5",)
    assert config.model.core.brims == {"communication": False}


def test_scientific_notation_reads_as_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as text; rates are typed that way, in files and overrides."""
    config = load_config(overrides=["train.lr=1e-3", "data.train_limit=1e3", "train.grad_clip=2.5E0"])
    assert config.train.lr == 0.001 and config.data.train_limit == 1000 and config.train.grad_clip == 2.5
    assert isinstance(config.data.train_limit, int)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n")
    assert load_config(path).train.lr == 3e-4
    assert load_config(path).to_yaml() == load_config(overrides=["train.lr=0.0003"]).to_yaml()
    assert parse_overrides(["a=1e", "b=e3", "c='1e-3'"]) == {"a": "1e", "b": "e3", "c": "1e-3"}  # text stays text


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\n  lr: 0.1\n")
    config = load_config(path, ["train.epochs=2"])
    assert (config.train.epochs, config.train.lr) == (2, 0.1)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1, "d": "x"}}, "e": [1, 2]}


@pytest.mark.parametrize("assignment", ["train.epochs", "=3", "train.epochs:3"])
def test_malformed_override(assignment):
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides([assignment])


@pytest.mark.parametrize("assignment", ["train.epochs=[1", "train.epochs=!!python/name:os.system", "a={b: [}"])
def test_override_value_that_is_not_plain_yaml(assignment):
    with pytest.raises(ConfigError, match="not plain YAML"):
        parse_overrides([assignment])


@pytest.mark.parametrize(
    ("assignments", "prefix"),
    [(["train.epochs=1", "train.epochs.x=2"], "train.epochs"), (["train=2", "train.epochs=1"], "train"),
     (["train.epochs=1", "train=2"], "train")],
)
def test_overrides_of_a_field_and_a_field_inside_it_conflict(assignments, prefix):
    with pytest.raises(ConfigError, match=f"conflicts with another override of {prefix}$"):
        parse_overrides(assignments)


def test_a_later_override_of_the_same_field_replaces_it():
    assert parse_overrides(["train.epochs=1", "train.lr=0.1", "train.epochs=2"]) == {"train": {"epochs": 2, "lr": 0.1}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.core.kind=transformer"], "model.core.kind"),
        (["model.core.kind=lstm", "model.core.brims.cell=gru"], "model.core.brims.cell"),
        (["data.train_resolution=0"], "data.train_resolution"),
        (["data.test_resolutions=[0]"], "data.test_resolutions"),
        (["model.core.brims.top_k=[7, 2]"], "model.core.brims.top_k"),
        (["model.core.brims.hidden_sizes=[300, 301]"], "model.core.brims.hidden_sizes"),
        (["model.core.brims.attention_dropout=1.5"], "model.core.brims.attention_dropout"),
        (["model.core.brims.input_value_factor=0"], "model.core.brims.input_value_factor"),
        (["model.core.kind=rims"], "model.core.kind=rims is one layer"),
        (["train.bogus=1"], "train.bogus"),
        (["model.core.bogus=1"], "model.core.bogus"),
        (["data.dataset=cifar10"], "data.noise"),  # the default noise has flips, cifar10 is not binarised
        (["data.dataset=svhn"], "data.dataset"),
        (["data.noise=[salt-0.1]"], "data.noise"),
        (["train.lr=0"], "train.lr"),
        (["train.lr_schedule=linear"], "train.lr_schedule"),
        (["train.lr_schedule=cosine", "train.lr_final_fraction=1.5"], "train.lr_final_fraction"),
        (["train.lr_final_fraction=0.1"], "train.lr_final_fraction"),  # read by the cosine schedule only
        (["train.epochs=two"], "train.epochs"),
        (["train.epochs=0"], "train.epochs"),
        (["data.test_limit=-1"], "data.test_limit"),
        (["train.logger=wandb"], "train.logger"),
        (["data.batch_size=true"], "data.batch_size"),
        (["model.embedding_size=-1"], "model.embedding_size"),
        (["train.checkpoint_every=0"], "train.checkpoint_every"),
        (["train.max_steps=100", "train.validate_every=200"], "train.validate_every"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    assert_names_field(str(error.value), field)


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown field bogus"):
        load_config(overrides=["bogus.x=1"])


def test_a_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="model must be a mapping"):
        load_config(overrides=["model=3"])


def test_flip_noise_on_cifar10_names_the_noise():
    with pytest.raises(ConfigError, match="flip-0.1") as error:
        load_config(overrides=["data.dataset=cifar10", "data.noise=[gaussian-0.1, flip-0.1]"])
    assert_names_field(str(error.value), "data.noise")
    ok = load_config(overrides=["data.dataset=cifar10", "data.noise=[gaussian-0.1]"])
    assert not ok.data.binarized


def test_missing_or_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_every_packaged_preset_loads():
    names = preset_names()
    assert {"smnist-cpu", "smnist-paper", "copying-cpu", "adding-cpu"} <= set(names)
    for name in names:
        if task_of(resolve_config(name)) == "rl":
            continue  # RL presets have their own config type (tests/test_rl.py)
        config = load_config(resolve_config(name))
        if config.task == "seqimage":
            assert config.data.dataset in ("mnist", "fashion-mnist", "cifar10")
            assert config.data.train_resolution not in config.data.test_resolutions
        elif config.task == "copying":
            assert config.data.train_gap not in config.data.test_gaps
        elif config.task == "adding":
            assert config.data.train_length not in config.data.test_lengths
        elif config.task == "video":
            assert config.data.objects not in config.data.test_objects and config.data.curtain
        else:
            assert config.task == "lm" and config.data.corpus in ("austen", "shakespeare", "gcide")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="neither a config file nor a preset; presets: adding-cpu, .*smnist-cpu"):
        resolve_config("no-such-preset")


def test_a_mistyped_preset_gets_a_suggestion(capsys):
    assert main(["train", "smnist-cp"]) == 2
    assert "did you mean smnist-cpu" in capsys.readouterr().err


def test_presets_lists_every_preset_with_its_task_and_budget(capsys):
    assert main(["presets"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    rows.pop("preset")
    assert sorted(rows) == preset_names()
    assert rows["smnist-cpu"] == ["seqimage", "1 epoch", "Sequential MNIST sized for a 2-core CPU"]
    assert rows["rl-cartpole-cpu"][:2] == ["rl", "40,960 environment steps"]
    assert rows["lm-austen-cpu"][1] == "1,500 steps"


def test_config_prints_the_whole_resolved_config(capsys, tmp_path):
    assert main(["config", "smnist-cpu", "--set", "train.lr=1e-4", "model.core.kind=lstm"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == load_config(resolve_config("smnist-cpu"), ["train.lr=1e-4", "model.core.kind=lstm"])
    assert main(["config", "rl-cartpole-cpu"]) == 0
    assert "ppo:" in capsys.readouterr().out
