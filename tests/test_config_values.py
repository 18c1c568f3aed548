"""Config values of the wrong kind are refused with a message that names the field: a float or a bool
where an integer belongs, a scalar or a list of the wrong things where a list belongs, an environment
id gymnasium does not know."""

from __future__ import annotations

import pytest

from brims_experiments.config_files import ConfigError
from brims_experiments.rl.config import load_rl_config
from brims_experiments.train.commands import resolve_config
from brims_experiments.train.config import load_config


def refusal(load, preset: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(resolve_config(preset), list(overrides))
    return str(caught.value)


@pytest.mark.parametrize("value", ["1.5", "true", "false", "-1"])
def test_a_seed_is_an_integer_not_a_float_nor_a_bool(value):
    for load, preset in ((load_config, "adding-cpu"), (load_rl_config, "rl-cartpole-cpu")):
        message = refusal(load, preset, f"train.seed={value}")
        assert "train.seed must be an integer >= 0" in message


@pytest.mark.parametrize("override, field", [
    ("train.devices=true", "train.devices"),
    ("train.devices=1.5", "train.devices"),
    ("train.devices=0", "train.devices"),
    ("train.lr=true", "train.lr"),
    ("train.grad_clip=true", "train.grad_clip"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.threads=true", "train.threads"),
    ("model.dropout=false", "model.dropout"),
])
def test_other_numbers_of_the_supervised_config_refuse_bools_and_floats(override, field):
    assert field in refusal(load_config, "adding-cpu", override)


def test_video_speed_and_radius_are_numbers_not_bools():
    assert "data.speed" in refusal(load_config, "video-balls-cpu", "data.speed=true")
    assert "data.radius" in refusal(load_config, "video-balls-cpu", "data.radius=true")


@pytest.mark.parametrize("override, field", [
    ("ppo.lr=true", "ppo.lr"),
    ("ppo.epochs=true", "ppo.epochs"),
    ("ppo.total_steps=1.5", "ppo.total_steps"),
    ("env.num_envs=true", "env.num_envs"),
    ("train.threads=1.5", "train.threads"),
    ("train.eval_episodes=true", "train.eval_episodes"),
])
def test_numbers_of_the_rl_config_refuse_bools_and_floats(override, field):
    assert field in refusal(load_rl_config, "rl-cartpole-cpu", override)


def test_devices_take_what_lightning_takes():
    for value, expected in (("auto", "auto"), ("2", 2), ("-1", -1), ("[0, 1]", [0, 1]), ("'0,1'", "0,1")):
        assert load_config(resolve_config("adding-cpu"), [f"train.devices={value}"]).train.devices == expected


LISTS = [  # (preset, field, a good list): every list-valued data field
    ("adding-cpu", "test_lengths", "[100, 200]"),
    ("copying-cpu", "test_gaps", "[100, 200]"),
    ("smnist-cpu", "test_resolutions", "[16, 19]"),
    ("smnist-cpu", "noise", "[gaussian-0.1]"),
    ("lm-austen-cpu", "noise", "[0.05, 0.2]"),
    ("video-balls-cpu", "test_objects", "[6, 8]"),
    ("video-balls-cpu", "curtain", "[0.25, 0.75]"),
]


@pytest.mark.parametrize("preset, name, good", LISTS)
@pytest.mark.parametrize("bad", ["100", "0.5", "abc", "true", "[a, b]", "{x: 1}"])
def test_a_list_field_given_a_scalar_or_wrong_elements_says_it_wants_a_list(preset, name, good, bad):
    if bad == "abc" and name == "noise" and preset == "smnist-cpu":
        bad = "gaussian-0.1"  # a string where the list of them belongs (it was read letter by letter)
    if bad == "[a, b]" and name == "noise" and preset == "smnist-cpu":
        bad = "[1, 2]"
    message = refusal(load_config, preset, f"data.{name}={bad}")
    assert message.startswith(f"data.{name} must be a list of ")
    assert "like [" in message and "not iterable" not in message


@pytest.mark.parametrize("preset, name, good", LISTS)
def test_a_good_list_is_held_as_a_tuple(preset, name, good):
    data = load_config(resolve_config(preset), [f"data.{name}={good}"]).data
    assert isinstance(getattr(data, name), tuple) and len(getattr(data, name)) >= 1


def test_an_empty_list_still_means_none_where_it_did():
    assert load_config(resolve_config("video-balls-cpu"), ["data.curtain=[]"]).data.curtain == ()
    assert load_config(resolve_config("smnist-cpu"), ["data.noise=[]"]).data.noise == ()


def test_a_mistyped_environment_id_is_named_with_the_close_ids_before_any_other_option():
    # rl-cartpole-cpu hides the velocity, which only CartPole has: the id is what is wrong
    message = refusal(load_rl_config, "rl-cartpole-cpu", "env.id=CartPol-v1")
    assert message.startswith("env.id 'CartPol-v1' is not a registered gymnasium environment")
    assert "did you mean CartPole-v1" in message and "hide_velocity" not in message


def test_registered_ids_of_every_family_are_accepted():
    for env_id in ("Acrobot-v1", "MiniGrid-MemoryS7-v0", "ALE/Pong-v5"):
        config = load_rl_config(resolve_config("rl-cartpole-cpu"), [f"env.id={env_id}", "env.hide_velocity=false"])
        assert config.env.id == env_id


# ---- what a suite needs fetched (brims reproduce --dry-run) -----------------------------------------


def dry_run(suite: str, tmp_path, capsys) -> str:
    from cli_support import brims

    assert brims("reproduce", suite, "--dry-run", "--runs", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "results")) == 0
    return capsys.readouterr().out


def test_a_dry_run_says_which_data_sets_to_fetch_first(tmp_path, capsys, monkeypatch):
    from brims_experiments.data.store import DATA_ENV, write_manifest

    root = tmp_path / "data"
    monkeypatch.setenv(DATA_ENV, str(root))
    assert "needs: brims fetch mnist, brims fetch austen (" in dry_run("cpu", tmp_path, capsys)
    (root / "mnist").mkdir(parents=True)
    write_manifest(root / "mnist", [])  # what `brims fetch mnist` writes last: mnist is prepared
    assert "needs: brims fetch austen (" in dry_run("cpu", tmp_path, capsys)
    (root / "austen").mkdir()
    write_manifest(root / "austen", [])
    assert "needs:" not in dry_run("cpu", tmp_path, capsys)


def test_a_dry_run_of_generated_data_needs_nothing_and_cifar_says_where_from(tmp_path, capsys, monkeypatch):
    from brims_experiments.data.store import DATA_ENV

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert "needs:" not in dry_run("quick", tmp_path, capsys)  # the adding problem is generated
    needs = dry_run("paper", tmp_path, capsys).split("needs: ")[1]
    assert needs.startswith("brims fetch mnist, brims fetch cifar10 --source <")  # video-mnist's mnist: listed once
    assert needs.count("brims fetch mnist") == 1
