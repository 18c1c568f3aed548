"""``brims reproduce`` and ``brims report``: suites, their runs, results, intervals, verdicts, and the
README's generated tables checked against the committed ``results/``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from cli_support import brims

from brims_experiments.config_files import ConfigError
from brims_experiments.reproduce.report import (
    Comparison,
    Estimate,
    plateau_gain,
    readme_block,
    readme_section,
    runs_by_day,
    update_readme,
    verdict,
    write_report,
)
from brims_experiments.reproduce.runner import estimate_minutes, execute, plan, record_session, status
from brims_experiments.reproduce.suites import Learned, load_suite, parse_suite
from brims_experiments.suites import suite_names

ROOT = Path(__file__).resolve().parents[1]

TINY_ADDING = {
    "task": "adding",
    "data": {"train_length": 5, "test_lengths": [8], "train_sequences": 32, "validation_sequences": 16,
             "test_sequences": 16, "batch_size": 16, "eval_batch_size": 16},
    "model": {"embedding_size": 8, "core": {"kind": "brims", "compile": False, "brims": {
        "hidden_sizes": [8, 8], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4}}},
    "train": {"epochs": 1, "lr": 0.01, "checkpoint_every": 1, "validate_every": 1, "accelerator": "cpu",
              "devices": 1},
}


def tiny_suite(tmp_path: Path, minutes: dict[str, float] | None = None):
    preset = tmp_path / "tiny-adding.yaml"
    preset.write_text(yaml.safe_dump(TINY_ADDING))
    return parse_suite("tiny", {
        "title": "tiny", "question": "Does the harness run?", "seeds": [0, 1], "jobs": 2,
        "experiments": [{
            "name": "adding", "preset": str(preset), "set": ["data.test_lengths=[10]"],
            "models": {"lstm": ["model.core.kind=lstm"], "brims": []}, "minutes": minutes or {},
            "better": "lower", "curve": "val/mse", "generalisation": "length", "generalisation_metric": "mse",
            "conditions": [{"label": "MSE 5", "path": "length.5.mse", "claim": "none", "why": "too easy to tell"},
                           {"label": "MSE 10", "path": "length.10.mse"}],
            "pairs": [["brims", "lstm"]],
        }],
    })


# ---- statistics and verdicts ----------------------------------------------------------------------


def test_interval_is_students_t_over_seeds():
    estimate = Estimate.of([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert estimate.mean == 2.0 and estimate.n == 3
    assert estimate.half_width == pytest.approx(4.303 / math.sqrt(3))
    assert estimate.format() == "2.0 ± 2.5"
    single = Estimate.of([0.5])
    assert math.isnan(single.half_width) and single.format() == "0.500"


@pytest.mark.parametrize(("ours", "theirs", "better", "expected"), [
    ([0.1, 0.11], [0.5, 0.52], "lower", "supported"),
    ([0.5, 0.52], [0.1, 0.11], "lower", "contradicted"),
    ([0.1, 0.5], [0.2, 0.3], "lower", "not answerable with these seeds"),
    ([0.9, 0.91], [0.5, 0.52], "higher", "supported"),
    ([0.5, 0.52], [0.9, 0.91], "higher", "contradicted"),
    ([0.1], [0.5], "lower", "not answerable with one shared seed"),
    ([], [], "lower", "not run yet"),
])
def test_a_claim_is_decided_by_the_interval_of_its_per_seed_effect(ours, theirs, better, expected):
    assert verdict(list(zip(ours, theirs)), better).startswith(expected)


def test_seeds_are_paired_so_a_consistent_effect_is_found_across_widely_spread_seeds():
    """Each seed's loss is half the baseline's while the seeds span two orders of magnitude: the two
    models' intervals overlap, the interval of the per-seed ratio (exactly 0.5) does not."""
    ours, theirs = [0.1, 1.0, 10.0], [0.2, 2.0, 20.0]
    assert Estimate.of(ours).high > Estimate.of(theirs).low
    judged = verdict(list(zip(ours, theirs)), "lower")
    assert judged == "supported (geometric-mean ratio 0.50, 95% interval 0.50 to 0.50; better in 3 of 3 seeds)"


def test_differences_are_judged_in_the_conditions_scale_and_losses_that_can_be_zero_as_differences():
    accuracy = verdict([(0.9, 0.5), (0.8, 0.5), (0.7, 0.5)], "higher", scale=100)
    assert accuracy == "supported (difference 30, 95% interval 5.2 to 55; better in 3 of 3 seeds)"
    with_zero = Comparison.of([(0.0, 0.5), (0.1, 0.5)], "lower")
    assert not with_zero.as_ratio and with_zero.effect.mean == pytest.approx(-0.45)


@pytest.mark.parametrize("bad", [math.inf, math.nan, 0.0])
def test_a_diverged_run_decides_nothing_and_is_named(bad):
    """A non-finite value would make the interval inf or nan (and a zero baseline a log of 0)."""
    judged = verdict([(0.01, 0.5), (bad, 0.5), (0.01, 0.5)] if bad else [(0.01, 0.5), (0.02, bad), (0.01, 0.4)],
                     "lower")
    if math.isfinite(bad):  # a zero: compared as a difference, which is finite
        assert judged.startswith(("supported (difference", "not answerable with these seeds (difference"))
    else:
        assert judged.startswith("not answerable (a value that is not finite in shared seed 2")


def test_a_claims_pairs_are_the_seeds_both_models_finished(tmp_path):
    from brims_experiments.reproduce.report import RunResult, judge, paired_values

    suite = tiny_suite(tmp_path)
    experiment = suite.experiments[0]
    claim = experiment.claims[0]  # brims against lstm on "MSE 10"
    run = lambda model, seed, mse: RunResult(model, seed, tmp_path, {"length": {"10": {"mse": mse}}})
    found = {"lstm": [run("lstm", 0, 0.5), run("lstm", 2, 0.7)],
             "brims": [run("brims", 0, 0.1), run("brims", 1, 0.2), run("brims", 2, 0.3)]}
    assert paired_values(claim, found, experiment) == [(0.1, 0.5), (0.3, 0.7)]
    assert judge(claim, found, experiment).startswith("not answerable with these seeds (geometric-mean ratio 0.29, ")
    assert judge(claim, {"lstm": found["lstm"], "brims": []}, experiment) == "not run yet (brims has no finished run)"
    assert judge(claim, {"lstm": [], "brims": []}, experiment) == "not run yet"
    apart = {"lstm": [run("lstm", 5, 0.5)], "brims": found["brims"]}
    assert judge(claim, apart, experiment) == "no seed that both models finished"
    unmeasured = {m: [RunResult(m, 0, tmp_path, {"length": {}})] for m in ("lstm", "brims")}
    assert judge(claim, unmeasured, experiment) == "no length.10.mse in the runs"


def test_a_verdict_on_a_model_that_did_not_learn_the_task_says_so(tmp_path):
    from brims_experiments.reproduce.report import RunResult, claims_table, learning_line, verdict_summary

    base = tiny_suite(tmp_path)
    experiment = dataclasses.replace(base.experiments[0], learned=Learned("MSE 5", at_most=0.2))
    run = lambda model, seed, easy, hard: RunResult(model, seed, tmp_path,
                                                    {"length": {"5": {"mse": easy}, "10": {"mse": hard}}})
    found = {"lstm": [run("lstm", 0, 0.1, 0.5), run("lstm", 1, 0.15, 0.6)],
             "brims": [run("brims", 0, 0.3, 0.25), run("brims", 1, 0.1, 0.3)]}
    assert learning_line(experiment, found).startswith(
        "Learned the task (MSE 5 at most 0.2, declared in the suite), seeds per model: lstm 2 of 2, brims 1 of 2.")
    row = claims_table(experiment, found)[-1]
    assert row.startswith("| brims / lstm | **supported**") and row.endswith(" (learned the task: BRIMs in 1 of 2 seeds) |")
    results = tmp_path / "results"
    for model, runs in found.items():
        for result in runs:
            folder = results / "adding" / model / f"seed{result.seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(result.metrics))
            (folder / "config.yaml").write_text("{}")
    summary = verdict_summary(dataclasses.replace(base, experiments=(experiment,)), results)
    assert summary[-1] == ("- adding (1 claims: 1 supported); supported, on the claims that BRIMs beat the LSTM on "
                           "MSE 10 (learned the task: BRIMs in 1 of 2 seeds); learned the task, seeds per model: "
                           "lstm 2 of 2, brims 1 of 2")
    everyone = {"lstm": found["lstm"], "brims": [run("brims", 0, 0.2, 0.25), run("brims", 1, 0.1, 0.3)]}
    assert " (learned the task" not in claims_table(experiment, everyone)[-1]  # at the bound counts as learned
    assert learning_line(base.experiments[0], found) is None  # no criterion, no line


@pytest.mark.parametrize("learned", [{"condition": "MSE 11", "at_most": 0.6},
                                     {"condition": "MSE 10", "at_most": 0.6, "at_least": 0.1},
                                     {"condition": "MSE 10"}, {"condition": "MSE 10", "at_most": "low"}])
def test_a_learned_criterion_names_a_condition_and_one_bound(learned):
    raw = {"title": "t", "question": "q", "seeds": [0], "experiments": [{
        "name": "adding", "preset": "adding-cpu", "models": {"lstm": [], "brims": []}, "better": "lower",
        "curve": "val/mse", "conditions": [{"label": "MSE 10", "path": "length.10.mse"}], "pairs": [["brims", "lstm"]],
        "learned": learned}]}
    with pytest.raises(ConfigError, match="learned: a mapping with condition"):
        parse_suite("t", raw)


def test_where_a_model_stands_is_its_curves_end_and_last_quarter_movement():
    from brims_experiments.reproduce.report import curve_movement

    curve = {100: 0.8, 200: 0.4, 300: 0.2, 400: 0.1}  # 3/4 of step 400 is 300
    assert curve_movement(curve, "lower") == (0.1, pytest.approx(-0.5))
    assert curve_movement({100: 0.2, 200: 0.5, 301: 0.6}, "higher") == (0.6, pytest.approx(0.1))  # from step 200
    assert curve_movement({100: 0.5}, "lower") is None


# ---- the packaged suites --------------------------------------------------------------------------


@pytest.mark.parametrize("name", suite_names())
def test_every_run_of_every_suite_has_a_valid_config(name, tmp_path):
    """Each planned run's preset and overrides build a config (a typo in a suite fails here, not hours in)."""
    suite = load_suite(name)
    runs = plan(suite, tmp_path / "runs", tmp_path / "results")
    assert len(runs) == sum(len(e.models) * len(e.seeds) for e in suite.experiments)
    for run in runs:
        config = run.config()
        assert config.train.seed == run.seed
        assert status(run, keep_results=False) == "new"
    for experiment in suite.experiments:  # every model of an experiment: the same budget, data and environment
        budgets = {json.dumps(everything_but_the_model_and_seed(r.config().as_dict()), sort_keys=True)
                   for r in runs if r.experiment is experiment and r.seed == suite.seeds[0]}
        assert len(budgets) == 1, experiment.name


def everything_but_the_model_and_seed(config: dict) -> dict:
    """A config's sections (data, training; env and PPO for RL) without the model and the seed."""
    config = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()
              if section != "model"}
    config["train"].pop("seed")
    return config


@pytest.mark.parametrize("name", suite_names())
def test_every_suite_has_three_seeds_and_a_claim_per_experiment(name):
    """With two seeds the interval's half-width is 12.7 standard errors (t with one degree of freedom)."""
    suite = load_suite(name)
    assert all(len(e.seeds) >= 3 and e.claims for e in suite.experiments)


def test_an_experiment_may_name_its_own_seeds(tmp_path):
    """A costlier experiment runs fewer seeds than the suite's: its plan and its table count those; a
    seed that is not an int is refused by name."""
    preset = tmp_path / "tiny-adding.yaml"
    preset.write_text(yaml.safe_dump(TINY_ADDING))
    experiment = {"name": "adding", "preset": str(preset), "models": {"lstm": ["model.core.kind=lstm"], "brims": []},
                  "better": "lower", "curve": "val/mse", "pairs": [["brims", "lstm"]],
                  "conditions": [{"label": "MSE 5", "path": "length.5.mse"}]}
    raw = {"title": "t", "question": "q", "seeds": [0, 1, 2, 3, 4],
           "experiments": [experiment, {**experiment, "name": "costly", "seeds": [0, 1, 2]}]}
    suite = parse_suite("two", raw)
    runs = plan(suite, tmp_path / "runs", tmp_path / "results")
    assert sorted({run.seed for run in runs if run.experiment.name == "adding"}) == [0, 1, 2, 3, 4]
    assert sorted({run.seed for run in runs if run.experiment.name == "costly"}) == [0, 1, 2]
    (tmp_path / "results").mkdir()
    report = write_report(suite, tmp_path / "results").read_text()
    assert "| lstm | 0 of 3 |" in report and "| lstm | 0 of 5 |" in report
    assert "Seeds 0, 1, 2, 3, 4 for every model (but costly 0, 1, 2)" in report
    raw["experiments"][1]["seeds"] = ["one"]
    with pytest.raises(ConfigError, match="experiment costly: seeds must be a list of ints"):
        parse_suite("two", raw)


def test_quick_suite_is_estimated_to_leave_set_up_its_two_minutes_of_the_15():
    suite = load_suite("quick")
    runs = plan(suite, Path("runs"), Path("results"))
    assert estimate_minutes(runs, {run.name: "new" for run in runs}, suite.jobs) <= 13


def test_an_unknown_suite_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as stop:
        brims("reproduce", "nope", "--dry-run")
    assert stop.value.code == 2
    assert "invalid choice: 'nope' (choose from 'converge', 'cpu', 'paper', 'quick', 'rl', 'video')" in capsys.readouterr().err


# ---- a tiny suite end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("suite")
    suite = tiny_suite(tmp_path)
    runs = plan(suite, tmp_path / "runs", tmp_path / "results")
    records = []

    def record(session):
        records.append(json.loads(json.dumps(session)))
        record_session(tmp_path / "results" / "tiny", session)

    session = execute(suite, runs, keep_results=False, jobs=2, say=lambda _: None, record=record)
    return suite, runs, session, tmp_path, records


def test_reproduce_runs_every_model_and_seed_and_keeps_no_checkpoints(reproduced):
    _suite, runs, session, _tmp_path, _ = reproduced
    assert set(session["runs"].values()) == {"finished"}, session["runs"]
    for run in runs:
        assert (run.result_dir / "metrics.json").is_file() and (run.result_dir / "config.yaml").is_file()
        assert (run.result_dir / "logs" / "metrics.csv").is_file()
        assert not list(run.result_dir.rglob("*.ckpt"))
        assert json.loads((run.result_dir / "metrics.json").read_text())["checkpoint"] == "best.ckpt"


def test_a_session_is_on_record_from_its_start_and_after_every_run(reproduced):
    """A session killed midway leaves its record up to its last finished run (``ended`` false)."""
    _suite, runs, session, tmp_path, records = reproduced
    assert len(records) == 1 + len(runs) + 1  # the start, each run, the end
    assert records[0]["runs"] == {} and records[0]["ended"] is False
    assert [sum(o == "finished" for o in r["runs"].values()) for r in records[1:-1]] == list(range(1, len(runs) + 1))
    assert records[-1]["ended"] is True and records[-1] == json.loads(json.dumps(session))
    assert len({r["started_at"] for r in records}) == 1
    results = tmp_path / "record"
    for record in records:
        record_session(results, record)
    record_session(results, {**records[-1], "started_at": "later"})
    stored = json.loads((results / "suite.json").read_text())["sessions"]
    assert [s["started_at"] for s in stored] == [records[0]["started_at"], "later"] and stored[0]["ended"] is True


def test_an_unreadable_suite_record_is_refused_by_name(tmp_path):
    from brims_experiments.config_files import ConfigError

    (tmp_path / "suite.json").write_text("<<<<<<< HEAD\n")
    with pytest.raises(ConfigError, match="suite.json is not a suite record"):
        record_session(tmp_path, {"started_at": "now"})


def test_an_interrupted_session_stops_its_runs_and_is_recorded_so(tmp_path, monkeypatch):
    """Ctrl-C while runs train: every run process is stopped (none left unsupervised), and the
    session's record says it was interrupted."""
    from brims_experiments.reproduce import runner

    suite = tiny_suite(tmp_path)
    started, records = [], []
    launch = runner._launch
    monkeypatch.setattr(runner, "_launch", lambda run, state: started.append(launch(run, state)) or started[-1])
    monkeypatch.setattr(runner.time, "sleep", lambda seconds: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        execute(suite, plan(suite, tmp_path / "runs", tmp_path / "results"), keep_results=False, jobs=2,
                say=lambda _: None, record=lambda session: records.append(dict(session)))
    assert len(started) == 2 and all(process.poll() is not None for process in started)
    assert records[-1]["ended"] == "interrupted"


def test_a_terminated_session_stops_its_runs_as_ctrl_c_does(tmp_path, monkeypatch):
    """``kill`` (SIGTERM) to the runner: its runs are stopped, not left training on their own, the
    session is recorded as interrupted, and SIGTERM's handler is the caller's again afterwards."""
    import signal

    from brims_experiments.reproduce import runner

    suite = tiny_suite(tmp_path)
    started, records = [], []
    launch = runner._launch
    monkeypatch.setattr(runner, "_launch", lambda run, state: started.append(launch(run, state)) or started[-1])
    monkeypatch.setattr(runner.time, "sleep", lambda seconds: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        execute(suite, plan(suite, tmp_path / "runs", tmp_path / "results"), keep_results=False, jobs=2,
                say=lambda _: None, record=lambda session: records.append(dict(session)))
    assert len(started) == 2 and all(process.poll() is not None for process in started)
    assert records[-1]["ended"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_run_takes_ctrl_c_even_where_the_runner_ignores_it(tmp_path):
    """A shell starts a script's background jobs with SIGINT ignored, and a child inherits that: the
    runner's runs must not, since the runner stops them with SIGINT (else it would wait on them forever)."""
    import signal

    from brims_experiments.reproduce import runner

    def ignored(pid: int) -> bool:  # SIGINT's bit in the process's mask of ignored signals (Linux)
        status = Path(f"/proc/{pid}/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
        return bool(mask & (1 << (signal.SIGINT - 1)))

    suite = tiny_suite(tmp_path)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert ignored(os.getpid())
        process = runner._launch(plan(suite, tmp_path / "runs", tmp_path / "results")[0], "new")
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        assert not ignored(process.pid)
    finally:
        process.kill()
        process.wait()


def test_reproduce_again_skips_the_finished_runs(reproduced):
    suite, runs, _, _tmp_path, _ = reproduced
    session = execute(suite, runs, keep_results=False, jobs=2, say=lambda _: None)
    assert set(session["runs"].values()) == {"finished before"}


def test_a_time_limit_starts_only_the_runs_that_fit_and_leaves_the_rest_for_later(tmp_path):
    suite = tiny_suite(tmp_path, minutes={"lstm": 0.5, "brims": 600})
    said = []
    session = execute(suite, plan(suite, tmp_path / "runs", tmp_path / "results"), keep_results=False, jobs=2,
                      say=said.append, minutes=30)
    assert session["runs"] == {"adding/lstm/seed0": "finished", "adding/lstm/seed1": "finished",
                               "adding/brims/seed0": "left for later", "adding/brims/seed1": "left for later"}
    assert not (tmp_path / "runs" / "tiny" / "adding" / "brims").exists()  # never started, so nothing half-trained
    assert "  left for later: adding/brims/seed1 (~600 min, more than the 30-min limit had left)" in said
    assert session["ended"] is True


def test_only_selects_runs_by_name_and_a_pattern_that_matches_none_is_one_message(tmp_path, capsys):
    out = tmp_path / "runs"
    assert brims("reproduce", "quick", "--dry-run", "--runs", str(out), "--only", "adding/lstm/*",
                 "--only", "*/brims/seed2") == 0
    listed = re.findall(r"^\s+new  (\S+)", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == ["adding/lstm/seed0", "adding/lstm/seed1", "adding/lstm/seed2", "adding/brims/seed2"]
    assert brims("reproduce", "quick", "--dry-run", "--runs", str(out), "--only", "adding/transformer/*") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--only adding/transformer/* matches no run of the suite" in err


def test_results_alone_count_as_finished_only_when_asked(reproduced):
    """On another machine (no run folders) a suite continues from its committed results with --keep-results."""
    suite, _, _, tmp_path, _ = reproduced
    elsewhere = plan(suite, tmp_path / "other-runs", tmp_path / "results")
    assert {status(run, keep_results=True) for run in elsewhere} == {"finished"}
    assert {status(run, keep_results=False) for run in elsewhere} == {"new"}


def test_the_report_and_the_readme_block_come_from_the_results(reproduced):
    suite, runs, _, tmp_path, _ = reproduced
    results = tmp_path / "results" / "tiny"
    report = write_report(suite, results).read_text()
    assert "| lstm | 2 of 2 |" in report and "| brims | 2 of 2 |" in report
    assert re.search(r"\| \S+ \| [\d.]+ min \| yes \| 2 \| .* \| 4 \|", report)  # the session, ended, 4 runs
    assert "| model against baseline | MSE 10 (better) |" in report
    assert re.search(r"\| brims / lstm \| \*\*[a-z ]+\*\*.*ratio .*, 95% interval .*; better in [012] of 2 seeds\) \|",
                     report)
    assert "- no claim on MSE 5: too easy to tell" in report
    assert re.search(r"- adding \(1 claims: 1 [a-z ]+\)", report)
    assert (results / "adding" / "learning.png").is_file() and (results / "adding" / "generalisation.png").is_file()
    first = json.loads((runs[0].result_dir / "metrics.json").read_text())["length"]["5"]["mse"]
    second = json.loads((runs[2].result_dir / "metrics.json").read_text())["length"]["5"]["mse"]
    assert runs[0].model == runs[2].model == "lstm"
    assert Estimate.of([first, second]).format() in report
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- suite tiny: generated by `brims report tiny --readme`, checked by the tests -->\n"
                      "stale\n<!-- end of suite tiny -->\noutro\n")
    assert update_readme(readme, suite, results)
    assert readme_section(readme.read_text(), "tiny") == readme_block(suite, results)
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("outro\n")


def test_a_per_step_metric_gets_a_panel_per_condition_and_the_runs_figures_are_shown(tmp_path):
    """``by_step`` draws one panel per test condition (each model's mean at every step, its interval, the
    condition's reference and the switch to the model's own predictions); ``run_figures`` are shown from
    each model's first seed where the run has them; a malformed ``by_step`` is refused by name."""
    import matplotlib.image

    preset = tmp_path / "tiny-adding.yaml"
    preset.write_text(yaml.safe_dump(TINY_ADDING))
    experiment = {
        "name": "frames", "preset": str(preset), "models": {"lstm": ["model.core.kind=lstm"], "brims": []},
        "better": "lower", "curve": "val/mse", "pairs": [["brims", "lstm"]],
        "conditions": [{"label": "error, a", "path": "condition.a.mean_error"}],
        "by_step": {"metric": "per_step", "label": "error", "reference": "constant", "switch": "read_steps"},
        "run_figures": ["strip.png", "rollout.gif"],
    }
    suite = parse_suite("frames", {"title": "t", "question": "q", "seeds": [0, 1], "experiments": [experiment]})
    results = tmp_path / "results"
    for model, offset in (("lstm", 1.0), ("brims", 0.0)):
        for seed in (0, 1):
            folder = results / "frames" / model / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text("{}")
            conditions = {name: {"per_step": [offset + seed + step for step in range(4)], "constant": 9.0,
                                 "mean_error": offset + seed} for name in ("a", "b", "c")}
            (folder / "metrics.json").write_text(json.dumps({"condition": conditions, "read_steps": 2, "parameters": 10}))
            if seed == 0 and model == "brims":
                (folder / "strip.png").write_bytes(b"png")
    report = write_report(suite, results).read_text()
    image = matplotlib.image.imread(results / "frames" / "by_step.png")
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side (one is about square)
    assert "![by_step](frames/by_step.png)" in report
    assert "brims, seed 0: ![strip](frames/brims/seed0/strip.png)" in report
    assert "lstm, seed 0:" not in report  # it has none of the run figures
    experiment["by_step"] = {"metric": "per_step"}
    with pytest.raises(ConfigError, match="frames, by_step: a mapping with metric and label"):
        parse_suite("frames", {"title": "t", "question": "q", "seeds": [0], "experiments": [experiment]})


# ---- the README against results/ -----------------------------------------------------------------


@pytest.mark.parametrize("name", suite_names())
def test_readme_tables_agree_with_the_committed_results(name):
    """The README's generated block of each suite equals what ``brims report`` builds from results/."""
    readme = (ROOT / "README.md").read_text()
    section = readme_section(readme, name)
    results = ROOT / "results" / name
    if section is None:
        assert not results.is_dir(), f"results/{name} is committed but the README has no generated block for it"
        return
    assert section == readme_block(load_suite(name), results), (
        f"README's tables for suite {name} differ from results/{name}: run `brims report {name} --readme README.md`")


def test_a_metric_path_may_cross_keys_that_hold_dots():
    from brims_experiments.reproduce.report import metric_at

    metrics = {"noise": {"0.05": {"ppl": 170.5}}, "length": {"200": {"mse": 0.1}}}
    assert metric_at(metrics, "noise.0.05.ppl") == 170.5 and metric_at(metrics, "length.200.mse") == 0.1
    with pytest.raises(KeyError, match="noise.0.2.ppl: no"):
        metric_at(metrics, "noise.0.2.ppl")


def test_dry_run_lists_every_run_with_its_command_and_the_estimate(tmp_path, capsys):
    assert brims("reproduce", "quick", "--dry-run", "--runs", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "results")) == 0
    out = capsys.readouterr().out
    assert out.count("       new  adding/") == 6
    assert "brims train adding-cpu --run-dir" in out and "train.seed=1 train.threads=1" in out
    assert "estimated wall time for what is not finished, 2 at a time:" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["reproduce", "report"])
def test_a_readme_without_the_suites_block_is_refused_before_any_work(command, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no generated block here\n")
    (tmp_path / "results" / "quick").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        brims(command, "quick", "--readme", str(readme), "--results", str(tmp_path / "results"),
              *(["--runs", str(tmp_path / "runs")] if command == "reproduce" else []))
    assert stop.value.code == 2
    assert f"--readme {readme}: no such file, or no generated block for suite quick in it" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results" / "quick" / "README.md").exists()


# ---- claims declared for every column -------------------------------------------------------------------


def test_claims_are_every_pair_on_every_condition_that_claims_something(tmp_path):
    experiment = tiny_suite(tmp_path).experiments[0]
    assert [(c.model, c.baseline, c.condition, c.kind) for c in experiment.claims] == [("brims", "lstm", "MSE 10",
                                                                                         "better")]
    assert experiment.claims[0].text == "BRIMs beat the LSTM on MSE 10"
    cpu = {e.name: e for e in load_suite("cpu").experiments}
    for experiment in cpu.values():
        assert len(experiment.claims) == len(experiment.pairs) * len(experiment.conditions)
    assert {c.kind for c in cpu["smnist"].claims if c.condition == "acc %, 14x14 (trained)"} == {"parity"}


@pytest.mark.parametrize(("change", "message"), [
    ({"claims": [{"text": "x", "model": "brims", "baseline": "lstm", "condition": "MSE 10"}]},
     "claims are not listed by hand"),
    ({"pairs": [["brims", "gru"]]}, "pairs must list [model, baseline] pairs"),
    ({"pairs": []}, "pairs must list"),
    ({"conditions": [{"label": "MSE 10", "path": "length.10.mse", "claim": "worse"}]}, "claim must be one of"),
    ({"conditions": [{"label": "MSE 10", "path": "length.10.mse", "claim": "none"}]}, "claim none needs a `why`"),
])
def test_a_suite_that_leaves_a_column_undeclared_is_refused(tmp_path, change, message):
    raw = {"title": "t", "question": "q", "seeds": [0, 1, 2], "experiments": [{
        "name": "adding", "preset": "adding-cpu", "models": {"lstm": [], "brims": []}, "better": "lower",
        "curve": "val/mse", "conditions": [{"label": "MSE 10", "path": "length.10.mse"}], "pairs": [["brims", "lstm"]],
        **change}]}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_suite("t", raw)


def test_a_parity_claim_is_consistent_or_names_the_better_model():
    same = [(0.5, 0.5), (0.6, 0.55), (0.55, 0.6)]
    assert verdict(same, "lower", kind="parity").startswith("consistent with parity (")
    better = verdict([(0.1, 0.5), (0.11, 0.5), (0.09, 0.5)], "lower", kind="parity")
    assert better.startswith("not on par: model better (")
    assert verdict([(0.9, 0.5), (0.91, 0.5), (0.89, 0.5)], "lower", kind="parity").startswith("not on par: model worse (")


def test_the_last_quarter_is_of_the_steps_trained_not_of_the_last_validation():
    from brims_experiments.reproduce.report import curve_movement

    curve = {step: step / 1000 for step in range(100, 1000, 100)}  # validated every 100 of 936 steps
    # 3/4 of 936 is 702: the quarter starts at the validation of step 700 (not 600, 3/4 of 900).
    assert curve_movement(curve, "higher", trained=936) == pytest.approx((0.9, 0.9 - 0.7))
    assert curve_movement(curve, "higher") == pytest.approx((0.9, 0.9 - 0.6))  # without the steps: the last one's


def test_the_summary_counts_every_declared_claim():
    from brims_experiments.reproduce.report import verdict_summary

    suite = load_suite("cpu")
    summary = verdict_summary(suite, ROOT / "results" / "cpu")
    for experiment in suite.experiments:
        line = next(line for line in summary if line.startswith(f"- {experiment.name} ("))
        counted = sum(int(n) for n in re.findall(r"(\d+) (?:supported|contradicted|not answerable|consistent with "
                                                  r"parity|not on par: model better|not on par: model worse|not run yet)",
                                                  line.split(";")[0]))
        assert counted == len(experiment.claims) == int(re.search(r"\((\d+) claims", line).group(1))
        # A verdict heads the claims it judged, worded as claims: "not on par: model worse" is never
        # followed by a bare "X and Y are on par", which would read as the finding.
        for word in re.findall(r"; ((?:supported|contradicted|not on par: model \w+|consistent with parity)[^;]*?)(?=;|$)",
                               line):
            assert ", on the claims that " in word, word


def test_the_figures_interval_is_of_the_kind_the_verdict_uses():
    from brims_experiments.reproduce.report import interval_of_kind

    losses = [0.001, 0.01, 0.1]  # over two orders of magnitude: the arithmetic interval crosses zero
    assert Estimate.of(losses).low < 0
    centre, low, high = interval_of_kind(losses, lower_is_better=True)
    assert centre == pytest.approx(0.01) and 0 < low < centre < high  # geometric: drawn whole on a log axis
    accuracies = [0.5, 0.6, 0.7]
    assert interval_of_kind(accuracies, lower_is_better=False) == pytest.approx(
        (Estimate.of(accuracies).mean, Estimate.of(accuracies).low, Estimate.of(accuracies).high))


def test_the_plateau_gain_is_the_best_values_last_quarter_gain_over_its_distance_from_chance():
    assert plateau_gain({100: 0.5, 200: 0.8, 400: 0.9}, "higher", chance=0.1) == pytest.approx(0.1 / 0.8)
    # The best so far, not the last value: a worse last validation gains nothing.
    assert plateau_gain({100: 1.0, 200: 0.5, 400: 0.6}, "lower", chance=1.386) == 0.0
    # The quarter counts from the steps trained, not from the last validation.
    assert plateau_gain({100: 0.5, 200: 0.8, 300: 0.9}, "higher", chance=0.1, trained=400) == 0.0
    assert plateau_gain({100: 0.5}, "higher", chance=0.1) is None


def test_runs_by_day_counts_every_training_session_of_the_finished_runs(tmp_path):
    suite = load_suite("quick")
    experiment = suite.experiments[0]
    for seed, starts in enumerate([["2026-12-01T23:00:00", "2026-12-02T01:00:00"], ["2026-12-02T02:00:00"]]):
        folder = tmp_path / experiment.name / next(iter(experiment.models)) / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("task: adding\n")
        (folder / "metrics.json").write_text("{}")
        (folder / "train_time.json").write_text(json.dumps({"sessions": [{"started_at": s, "seconds": 1800.0}
                                                                         for s in starts]}))
    table = runs_by_day(suite, tmp_path)
    assert "| 2026-12-01 | 1 | 0.5 |" in table and "| 2026-12-02 | 2 | 1.0 |" in table


def test_collect_replaces_a_results_folder_whole_and_a_failed_swap_keeps_the_earlier_copy(tmp_path, monkeypatch):
    from brims_experiments.reproduce.runner import PlannedRun, collect

    run_dir, result_dir = tmp_path / "run", tmp_path / "results" / "seed0"
    (run_dir / "logs").mkdir(parents=True)
    for name, text in [("config.yaml", "task: adding\n"), ("train_time.json", "{}"), ("logs/metrics.csv", "a\n1\n")]:
        (run_dir / name).write_text(text)
    (run_dir / "metrics.json").write_text(json.dumps({"checkpoint": "/elsewhere/checkpoints/best.ckpt", "v": 2}))
    (run_dir / "figure.png").write_bytes(b"png")
    result_dir.mkdir(parents=True)
    (result_dir / "metrics.json").write_text(json.dumps({"v": 1}))
    (result_dir / "stale.png").write_bytes(b"old")
    run = PlannedRun(experiment=None, model="lstm", seed=0, run_dir=run_dir, result_dir=result_dir)

    real_rename = Path.rename

    def kill_at_the_second_rename(self, target):
        if str(self).endswith(".partial"):
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", kill_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        collect(run)
    earlier = result_dir.with_name("seed0.replaced")
    assert json.loads((earlier / "metrics.json").read_text()) == {"v": 1}  # set aside, not deleted
    monkeypatch.setattr(Path, "rename", real_rename)

    collect(run)
    assert sorted(p.name for p in result_dir.parent.iterdir()) == ["seed0"]  # no staging, no earlier copy
    assert sorted(str(p.relative_to(result_dir)) for p in result_dir.rglob("*") if p.is_file()) == [
        "config.yaml", "figure.png", "logs/metrics.csv", "metrics.json", "train_time.json"]
    assert json.loads((result_dir / "metrics.json").read_text()) == {"checkpoint": "best.ckpt", "v": 2}


def _record_many(results: str, worker: int, count: int) -> None:
    from brims_experiments.reproduce.runner import record_session

    for index in range(count):
        record_session(Path(results), {"started_at": f"{worker}-{index}", "runs": []})


def test_sessions_recorded_at_once_by_several_processes_are_all_kept(tmp_path):
    """Two `brims reproduce` of one suite (one per core) share suite.json: no record is lost."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(str(tmp_path), worker, 40)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    recorded = json.loads((tmp_path / "suite.json").read_text())["sessions"]
    assert sorted(s["started_at"] for s in recorded) == sorted(f"{w}-{i}" for w in range(4) for i in range(40))
