"""Named suites of runs (configs x models x seeds) that answer the papers' questions, read from YAML.

A suite file (``brims_experiments/suites/<name>.yaml``) names its question and its experiments. Each
experiment is one preset with the overrides every model shares, the models with their own
overrides, the test conditions its tables report (dotted paths into a run's ``metrics.json``), the
validation column its learning curves plot, and the comparisons it declares: pairs of models
(``pairs``: model against baseline) and, for every condition, what the papers claim there
(``claim``: ``better``, the model beats the baseline; ``parity``, neither is better, as the papers
claim at the training condition; or ``none`` with ``why``). The claims are every pair on every
condition that claims something, declared before the runs: the report judges all of them, so that no
column can be left out after the results are seen. Every model of an experiment gets the same
seeds (the suite's, or an experiment's own ``seeds`` where its runs cost more), budget and data
order. Figures: learning curves of ``curve`` (with ``curve_chance``, the
plateau measured), test metric against length (``generalisation``), a per-step metric per test
condition (``by_step``, :class:`ByStep`), and each model's first-seed run figures (``run_figures``).
``learned`` (:class:`Learned`) states when a run has learned the task at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from brims_experiments.config_files import ConfigError, require
from brims_experiments.figures import MODEL_NAMES
from brims_experiments.suites import suite_names, suite_text


@dataclass(frozen=True)
class Condition:
    """One column of a results table: ``path`` into ``metrics.json`` (e.g. ``length.200.mse``)."""

    label: str
    path: str
    scale: float = 1.0  # shown as scale * value (100 for a share in %)
    better: str | None = None  # "lower" or "higher"; None: the experiment's
    claim: str = "better"  # what the papers claim of each pair here: "better", "parity" or "none"
    why: str = ""  # with claim "none": why no pair is judged on this condition


CLAIM_KINDS = ("better", "parity", "none")


@dataclass(frozen=True)
class ByStep:
    """A figure of a per-step metric, one panel per test condition: ``metrics.json[conditions][<name>][metric]``
    is a list with one value per step (e.g. the error of each predicted frame); ``reference`` is a value of
    the same condition drawn as a line (e.g. the constant predictor's error); ``switch``, a key of
    ``metrics.json``, the number of steps after which the model reads its own predictions."""

    metric: str
    label: str
    conditions: str = "condition"
    reference: str | None = None
    reference_label: str = ""
    switch: str | None = None
    switch_label: str = ""
    step_label: str = "step"


@dataclass(frozen=True)
class Learned:
    """When a run has learned the task at all: its value of ``condition`` (a label of the experiment's
    conditions) is at most ``at_most`` or at least ``at_least``. A model that has not learned predicts
    about as well as a trivial predictor, so its comparisons on the other conditions say nothing
    about how it generalises: every verdict on it says in how many seeds it learned."""

    condition: str
    at_most: float | None = None
    at_least: float | None = None

    def met(self, value: float) -> bool:
        return value <= self.at_most if self.at_most is not None else value >= self.at_least

    def describe(self) -> str:
        return f"{self.condition} at most {self.at_most:g}" if self.at_most is not None \
            else f"{self.condition} at least {self.at_least:g}"


@dataclass(frozen=True)
class Claim:
    """``model`` does better than ``baseline`` on ``condition`` (a label of the experiment's
    conditions), or, of kind ``parity``, neither does better."""

    text: str
    model: str
    baseline: str
    condition: str
    kind: str = "better"


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    overrides: tuple[str, ...]
    models: dict[str, tuple[str, ...]]  # model name -> its own overrides
    conditions: tuple[Condition, ...]
    better: str  # "lower" or "higher": for every condition of the experiment
    curve: str  # the validation column of logs/metrics.csv its learning curves plot
    curve_label: str
    generalisation: str | None  # metrics.json key whose conditions are sequence lengths, e.g. "length"
    generalisation_metric: str | None
    chance: float | None  # the chance level of the generalisation figure, in the condition's scale
    curve_chance: float | None  # the learning curve's value at chance: with it, the report measures the plateau
    pairs: tuple[tuple[str, str], ...]  # (model, baseline) compared on every condition with a claim
    claims: tuple[Claim, ...]  # every pair on every such condition, in pair order
    minutes: dict[str, float]  # estimated minutes per run of each model, on 2 cores (one thread)
    note: str
    seeds: tuple[int, ...] = ()  # the suite's seeds unless the experiment names its own
    by_step: ByStep | None = None  # a per-step metric's figure, per condition
    run_figures: tuple[str, ...] = ("module_activity.png",)  # shown from each model's first seed, where it has them
    learned: Learned | None = None  # when a run has learned the task at all

    def condition(self, label: str) -> Condition:
        """The condition labelled ``label``."""
        return next(c for c in self.conditions if c.label == label)

    def better_of(self, label: str) -> str:
        """Whether lower or higher is better for the condition ``label``."""
        return self.condition(label).better or self.better

    def overrides_for(self, model: str, seed: int) -> list[str]:
        return [*self.overrides, *self.models[model], f"train.seed={seed}", "train.threads=1"]


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    question: str
    machine: str
    seeds: tuple[int, ...]
    jobs: int
    experiments: tuple[Experiment, ...]


def model_name(model: str) -> str:
    """A model's name in a sentence: ``BRIMs``, ``the LSTM``, ``BRIMs without top-down``."""
    return {"lstm": "the LSTM", "memoryless": "the memoryless agent"}.get(model, MODEL_NAMES.get(model, model))


def claim_text(model: str, baseline: str, condition: Condition) -> str:
    """The claim in words: ``BRIMs beat the LSTM on MSE, length 200``."""
    ours, theirs = model_name(model), model_name(baseline)
    if condition.claim == "parity":
        return f"{ours} and {theirs} are on par on {condition.label}"
    return f"{ours[0].upper() + ours[1:]} beat {theirs} on {condition.label}"


def load_suite(name: str) -> Suite:
    """The suite ``name`` (one of :func:`suite_names`), validated; errors name the field."""
    names = suite_names()
    if name not in names:
        raise ConfigError(f"unknown suite {name!r}; the suites are {', '.join(names)}")
    return parse_suite(name, yaml.safe_load(suite_text(name)))


def _strings(where: str, value: Any) -> tuple[str, ...]:
    require(isinstance(value, list) and all(isinstance(v, str) for v in value), f"{where} must be a list of strings")
    return tuple(value)


def _by_step(where: str, raw: Any) -> ByStep | None:
    if raw is None:
        return None
    fields = set(ByStep.__dataclass_fields__)
    require(isinstance(raw, dict) and {"metric", "label"} <= set(raw) and set(raw) <= fields,
            f"{where}, by_step: a mapping with metric and label, and optionally {', '.join(sorted(fields - {'metric', 'label'}))}")
    return ByStep(**raw)


def _learned(where: str, raw: Any, labels: set[str]) -> Learned | None:
    if raw is None:
        return None
    require(isinstance(raw, dict) and set(raw) <= {"condition", "at_most", "at_least"} and raw.get("condition") in labels
            and len(set(raw) & {"at_most", "at_least"}) == 1
            and all(isinstance(raw[bound], (int, float)) for bound in set(raw) & {"at_most", "at_least"}),
            f"{where}, learned: a mapping with condition (a label of the experiment's conditions) and one number, "
            "at_most or at_least")
    return Learned(**raw)


def parse_suite(name: str, raw: dict[str, Any]) -> Suite:
    from brims_experiments.train.commands import resolve_config

    require(isinstance(raw, dict), f"suite {name}: not a mapping")
    seeds = tuple(raw.get("seeds", ()))
    require(len(seeds) >= 1 and all(isinstance(s, int) for s in seeds), f"suite {name}: seeds must be a list of ints")
    experiments = []
    for index, item in enumerate(raw.get("experiments", [])):
        where = f"suite {name}, experiment {item.get('name', index)}"
        try:
            resolve_config(str(item.get("preset")))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        models = {model: _strings(f"{where}, model {model}", overrides or [])
                  for model, overrides in item["models"].items()}
        conditions = tuple(Condition(**c) for c in item["conditions"])
        labels = {c.label for c in conditions}
        require("claims" not in item, f"{where}: claims are not listed by hand; declare `pairs` (model against "
                "baseline) and each condition's `claim` (better, parity or none with why): every pair is judged "
                "on every condition that claims something")
        for condition in conditions:
            require(condition.claim in CLAIM_KINDS, f"{where}, condition {condition.label!r}: claim must be one of "
                    f"{', '.join(CLAIM_KINDS)}, got {condition.claim!r}")
            require(condition.claim != "none" or condition.why.strip(),
                    f"{where}, condition {condition.label!r}: claim none needs a `why`")
        pairs = tuple(tuple(pair) for pair in item.get("pairs", []))
        require(bool(pairs) and all(len(pair) == 2 and pair[0] in models and pair[1] in models and pair[0] != pair[1]
                                    for pair in pairs),
                f"{where}: pairs must list [model, baseline] pairs of two different models of the experiment")
        claims = tuple(Claim(claim_text(model, baseline, c), model, baseline, c.label, c.claim)
                       for model, baseline in pairs for c in conditions if c.claim != "none")
        require(len(labels) == len(conditions), f"{where}: condition labels must differ")
        require(item.get("better") in ("lower", "higher") and all(c.better in (None, "lower", "higher")
                                                                  for c in conditions),
                f"{where}: better must be lower or higher")
        minutes = {model: float(item.get("minutes", {}).get(model, 5.0)) for model in models}
        own_seeds = tuple(item.get("seeds", seeds))
        require(len(own_seeds) >= 1 and all(isinstance(s, int) for s in own_seeds),
                f"{where}: seeds must be a list of ints")
        experiments.append(Experiment(
            name=item["name"], preset=item["preset"], overrides=_strings(f"{where}, set", item.get("set", [])),
            models=models, conditions=conditions, better=item["better"], curve=item["curve"],
            curve_label=item.get("curve_label", item["curve"]), generalisation=item.get("generalisation"),
            generalisation_metric=item.get("generalisation_metric"), chance=item.get("chance"),
            curve_chance=item.get("curve_chance"), pairs=pairs, claims=claims, minutes=minutes,
            note=item.get("note", "").strip(), seeds=own_seeds, by_step=_by_step(where, item.get("by_step")),
            run_figures=_strings(f"{where}, run_figures", item.get("run_figures", ["module_activity.png"])),
            learned=_learned(where, item.get("learned"), labels),
        ))
    require(experiments, f"suite {name}: no experiments")
    jobs = raw.get("jobs", 1)
    require(isinstance(jobs, int) and jobs >= 1, f"suite {name}: jobs must be a positive int")
    return Suite(name=name, title=raw["title"], question=raw["question"].strip(), machine=raw.get("machine", "cpu"),
                 seeds=seeds, jobs=jobs, experiments=tuple(experiments))
