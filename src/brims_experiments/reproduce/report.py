"""A suite's report from its committed results alone: tables with 95% intervals over seeds, the
claims each table tests, learning and generalisation curves, and the README's blocks.

Everything here reads ``results/<suite>/`` (never the run folders), so the report and the README's
tables can be rebuilt, and checked, from what is in git. Intervals are Student-t 95% intervals of
the mean over seeds (``mean ± t_{0.975, n-1} s / sqrt(n)``); with one seed there is no interval.
A claim (model beats baseline on one condition) is judged on the seeds both models ran, paired by
seed (runs of one seed share their data order): the per-seed effect is the log ratio of model to
baseline where lower is better (a difference if a value is zero or negative) and the difference
where higher is better. The claim is *supported* when the 95% interval of the mean effect lies
wholly on the model's better side, *contradicted* when wholly on its worse side, and *not
answerable with these seeds* otherwise; a value that is not finite decides nothing. Each verdict
shows the effect with its interval and counts the seeds in which the model did better.
Learning curves show the mean over seeds and, as a band, their range.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brims_experiments.data.store import atomic_write_text
from brims_experiments.figures import save_figure
from brims_experiments.reproduce.suites import Claim, Experiment, Suite, model_name
from brims_experiments.run_folder import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    STEPS_COLUMN,
    TRAIN_TIME_FILE,
    read_log_rows,
)

# Two-sided 95% quantiles of Student's t, by degrees of freedom (the standard table).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}
REPORT_FILE = "README.md"


def t_quantile(df: int) -> float:
    known = [d for d in sorted(T_975) if d <= df]
    return T_975[known[-1]] if known else math.inf


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` seeds and its 95% interval's half-width (nan for one seed)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, math.nan, n)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, t_quantile(n - 1) * sd / math.sqrt(n), n)

    @property
    def low(self) -> float:
        return self.mean - (0.0 if math.isnan(self.half_width) else self.half_width)

    @property
    def high(self) -> float:
        return self.mean + (0.0 if math.isnan(self.half_width) else self.half_width)

    def format(self, scale: float = 1.0) -> str:
        mean, half = scale * self.mean, scale * self.half_width
        # Two significant digits of the interval and of the mean; three of a lone value.
        if self.n > 1 and half > 0:
            digits = max(_digits(half), _digits(abs(mean)))
        else:
            digits = min(5, _digits(abs(mean)) + 1)
        text = f"{mean:.{digits}f}"
        if self.n > 1:
            text += f" ± {half:.{digits}f}"
        return text


def _digits(size: float) -> int:
    """Decimals that show two significant digits of ``size`` (at most 5)."""
    if not size or not math.isfinite(size):
        return 3
    return max(0, min(5, 1 - math.floor(math.log10(abs(size)))))


def metric_at(metrics: dict[str, Any], path: str) -> float:
    """The value at a dotted ``path``; a key may itself hold dots (``noise.0.05.ppl``: the key ``0.05``)."""
    value: Any = metrics
    parts = path.split(".")
    while parts:
        for take in range(1, len(parts) + 1):
            key = ".".join(parts[:take])
            if isinstance(value, dict) and key in value:
                value, parts = value[key], parts[take:]
                break
        else:
            raise KeyError(f"{path}: no {parts[0]!r} in the run's metrics")
    return float(value)


@dataclass
class RunResult:
    model: str
    seed: int
    folder: Path
    metrics: dict[str, Any]


def load_results(results: Path, experiment: Experiment) -> dict[str, list[RunResult]]:
    """Finished runs of one experiment by model, in seed order (folders without metrics are not finished)."""
    found: dict[str, list[RunResult]] = {model: [] for model in experiment.models}
    for model in experiment.models:
        for folder in sorted((results / experiment.name / model).glob("seed*"), key=lambda p: int(p.name[4:])):
            if (folder / METRICS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
                found[model].append(RunResult(model, int(folder.name[4:]), folder,
                                              json.loads((folder / METRICS_FILE).read_text())))
    return found


def estimates(found: dict[str, list[RunResult]], experiment: Experiment) -> dict[tuple[str, str], Estimate]:
    """Per (model, condition label) the estimate over its finished seeds; a condition its runs lack
    (a suite's path that names no metric) is left out, and its cell says so."""
    table = {}
    for model, runs in found.items():
        for condition in experiment.conditions:
            try:
                values = [metric_at(r.metrics, condition.path) for r in runs]
            except KeyError:
                continue
            if values:
                table[(model, condition.label)] = Estimate.of(values)
    return table


def paired_values(claim: Claim, found: dict[str, list[RunResult]], experiment: Experiment) -> list[tuple[float, float]]:
    """(model, baseline) values of the claim's condition in each seed both models finished, in seed
    order (runs of one seed share their data order, so a seed is a pair); a seed whose runs lack the
    condition's metric is left out."""
    path = experiment.condition(claim.condition).path
    ours = {r.seed: r for r in found.get(claim.model, [])}
    theirs = {r.seed: r for r in found.get(claim.baseline, [])}
    pairs = []
    for seed in sorted(ours.keys() & theirs.keys()):
        try:
            pairs.append((metric_at(ours[seed].metrics, path), metric_at(theirs[seed].metrics, path)))
        except KeyError:
            continue
    return pairs


def _two_digits(value: float) -> str:
    """At least two significant digits, in scientific notation outside 1e-4 .. 1e5 (ratios can be extreme)."""
    if value and not 1e-4 <= abs(value) < 1e5:
        return f"{value:.1e}"
    return f"{value:.{_digits(value)}f}"


@dataclass(frozen=True)
class Comparison:
    """A claim's evidence: the 95% interval of the mean per-seed effect of model against baseline,
    and in how many seeds the model did better.

    Where lower is better (losses, errors: positive, and spread over orders of magnitude between
    seeds) the effect is the log ratio ``ln(model) - ln(baseline)``, shown as the geometric-mean
    ratio; where higher is better (accuracies), or where a value is zero or negative, it is the
    difference ``model - baseline``, in the condition's scale.
    """

    effect: Estimate
    as_ratio: bool
    wins: int

    @classmethod
    def of(cls, pairs: list[tuple[float, float]], better: str, scale: float = 1.0) -> Comparison:
        lower_is_better = better == "lower"
        as_ratio = lower_is_better and all(a > 0 and b > 0 for a, b in pairs)
        effects = [math.log(a) - math.log(b) if as_ratio else scale * (a - b) for a, b in pairs]
        wins = sum(a < b if lower_is_better else a > b for a, b in pairs)
        return cls(Estimate.of(effects), as_ratio, wins)

    def describe(self) -> str:
        effect, shown = self.effect, (math.exp if self.as_ratio else float)
        text = f"{'geometric-mean ratio' if self.as_ratio else 'difference'} {_two_digits(shown(effect.mean))}"
        if effect.n > 1:
            text += f", 95% interval {_two_digits(shown(effect.low))} to {_two_digits(shown(effect.high))}"
        return text + f"; better in {self.wins} of {effect.n} seeds"


def verdict(pairs: list[tuple[float, float]], better: str, scale: float = 1.0, kind: str = "better") -> str:
    """*supported* when the 95% interval of the mean per-seed effect (:class:`Comparison`) of the
    (model, baseline) ``pairs`` lies wholly on the model's better side, *contradicted* when wholly
    on its worse side, else *not answerable*. A claim of parity (``kind="parity"``) is
    *consistent with parity* when the interval holds no effect, else *not on par* (the model better
    or worse): an interval that holds no effect bounds the difference; it does not prove parity.
    A value that is not finite (a diverged run) decides nothing: the claim is not answerable and the
    verdict names the seed."""
    if not pairs:
        return "not run yet"
    for index, (ours, theirs) in enumerate(pairs):
        if not (math.isfinite(ours) and math.isfinite(theirs)):
            return f"not answerable (a value that is not finite in shared seed {index + 1}: {ours} against {theirs})"
    comparison = Comparison.of(pairs, better, scale)
    evidence, effect = comparison.describe(), comparison.effect
    if effect.n < 2:
        return f"not answerable with one shared seed ({evidence})"
    lower_is_better = better == "lower"
    model_better = (effect.high < 0) if lower_is_better else (effect.low > 0)
    model_worse = (effect.low > 0) if lower_is_better else (effect.high < 0)
    if kind == "parity":
        outcome = "not on par: model better" if model_better else "not on par: model worse" if model_worse \
            else "consistent with parity"
        return f"{outcome} ({evidence})"
    if model_better:
        return f"supported ({evidence})"
    if model_worse:
        return f"contradicted ({evidence})"
    return f"not answerable with these seeds ({evidence})"


def judge(claim: Claim, found: dict[str, list[RunResult]], experiment: Experiment) -> str:
    """The claim's verdict on the finished runs ``found``, or why there is none yet."""
    missing = [model for model in (claim.model, claim.baseline) if not found.get(model)]
    if missing:
        return "not run yet" if len(missing) == 2 else f"not run yet ({missing[0]} has no finished run)"
    condition = experiment.condition(claim.condition)
    pairs = paired_values(claim, found, experiment)
    if not pairs:
        seeds = {r.seed for r in found[claim.model]} & {r.seed for r in found[claim.baseline]}
        return (f"no {condition.path} in the runs" if seeds else "no seed that both models finished")
    return verdict(pairs, experiment.better_of(claim.condition), condition.scale, claim.kind)


def learned_counts(experiment: Experiment, runs: list[RunResult]) -> tuple[int, int] | None:
    """(seeds that learned the task by the experiment's ``learned`` criterion, seeds with its metric),
    or None without a criterion or such seeds."""
    if experiment.learned is None:
        return None
    path = experiment.condition(experiment.learned.condition).path
    values = []
    for run in runs:
        try:
            values.append(metric_at(run.metrics, path))
        except KeyError:
            continue
    return (sum(experiment.learned.met(v) for v in values), len(values)) if values else None


def learned_caveat(claim: Claim, found: dict[str, list[RunResult]], experiment: Experiment) -> str:
    """`` (learned the task: RIMs in 0 of 3 seeds)`` where the claim's model or baseline did not learn
    in every finished seed, else empty: such a verdict compares a trivial predictor."""
    short = []
    for model in (claim.model, claim.baseline):
        counts = learned_counts(experiment, found.get(model, []))
        if counts is not None and counts[0] < counts[1]:
            short.append(f"{model_name(model)} in {counts[0]} of {counts[1]} seeds")
    return f" (learned the task: {', '.join(short)})" if short else ""


def learned_parts(experiment: Experiment, found: dict[str, list[RunResult]]) -> list[str]:
    """``rims 0 of 3`` per model with seeds judged by the experiment's ``learned`` criterion."""
    return [f"{model} {counts[0]} of {counts[1]}" for model, runs in found.items()
            if (counts := learned_counts(experiment, runs)) is not None]


def learning_line(experiment: Experiment, found: dict[str, list[RunResult]]) -> str | None:
    """In how many seeds each model learned the task at all, by the experiment's ``learned`` criterion."""
    parts = learned_parts(experiment, found)
    if not parts:
        return None
    return (f"Learned the task ({experiment.learned.describe()}, declared in the suite), seeds per model: "
            f"{', '.join(parts)}. A model that has not learned stays close to the trivial predictor, so "
            "its comparisons on the other conditions say nothing about how it generalises; every verdict on such a "
            "model says so.")


VERDICT_WORDS = ("supported", "contradicted", "not answerable", "consistent with parity", "not on par: model better",
                 "not on par: model worse", "not run yet", "no ")


DECIDED = ("supported", "contradicted", "not on par: model better", "not on par: model worse")


def verdict_word(judged: str) -> str:
    """The verdict without its evidence: ``supported``, ``not answerable``, ``consistent with parity``..."""
    return next((word.strip() for word in VERDICT_WORDS if judged.startswith(word)), judged)


def experiment_table(experiment: Experiment, found: dict[str, list[RunResult]]) -> str:
    """Markdown: one row per model (seeds, steps, parameters, each condition's mean ± 95% interval)
    of the runs ``found`` (:func:`load_results`), then each claim with its verdict."""
    table = estimates(found, experiment)
    header = ["model", "seeds", "steps trained", "best step", "params", *(c.label for c in experiment.conditions)]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(experiment.conditions)]
    for model, runs in found.items():
        if not runs:
            lines.append(f"| {model} | 0 of {len(experiment.seeds)} | - | - | - |" + " - |" * len(experiment.conditions))
            continue
        trained = sorted({trained_steps(r.metrics) for r in runs})
        # An RL run is tested with its final policy: its "best step" is its last.
        best = sorted({r.metrics.get("global_step", trained_steps(r.metrics)) for r in runs})
        cells = [model, f"{len(runs)} of {len(experiment.seeds)}", "/".join(str(s) for s in trained),
                 "/".join(str(s) for s in best), f"{runs[0].metrics['parameters']:,}"]
        cells += [table[(model, c.label)].format(c.scale) if (model, c.label) in table else f"no {c.path}"
                  for c in experiment.conditions]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    higher = [c.label for c in experiment.conditions if experiment.better_of(c.label) == "higher"]
    lower = [c.label for c in experiment.conditions if experiment.better_of(c.label) == "lower"]
    if higher and lower:
        direction = f"lower is better for {', '.join(lower)}; higher for {', '.join(higher)}"
    else:
        direction = f"{'higher' if higher else 'lower'} is better"
    lines.append(f"Mean ± 95% interval over seeds ({direction}). Each claim is judged on the 95% interval, over the "
                 "seeds both models finished, of the model's mean log ratio to the baseline where lower is better "
                 "(shown as the geometric-mean ratio), of its difference from it where higher is better. Every "
                 "declared pair is judged on every condition where the papers claim something (declared in the "
                 "suite before its runs):")
    lines += ["", *claims_table(experiment, found)]
    for condition in experiment.conditions:
        if condition.claim == "none":
            lines.append(f"- no claim on {condition.label}: {condition.why.strip()}")
    learned = learning_line(experiment, found)
    if learned:
        lines += ["", learned]
    where = " ".join(part for part in (standing(experiment, found), plateau_evidence(experiment, found)) if part) or None
    if where:
        lines += ["", where]
    return "\n".join(lines)


def claims_table(experiment: Experiment, found: dict[str, list[RunResult]]) -> list[str]:
    """Markdown rows: one per declared pair, one column per condition with a claim, each cell the verdict."""
    claimed = [c for c in experiment.conditions if c.claim != "none"]
    header = ["model against baseline", *(f"{c.label} ({c.claim})" for c in claimed)]
    rows = ["| " + " | ".join(header) + " |", "|---|" + "---|" * len(claimed)]
    for model, baseline in experiment.pairs:
        cells = [f"{model} / {baseline}"]
        for condition in claimed:
            claim = next(c for c in experiment.claims
                         if (c.model, c.baseline, c.condition) == (model, baseline, condition.label))
            judged = judge(claim, found, experiment) + learned_caveat(claim, found, experiment)
            word = verdict_word(judged)
            cells.append(f"**{word}**{judged[len(word):]}" if judged.startswith(word) else judged)
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def curve_movement(curve: dict[int, float], better: str, trained: int | None = None) -> tuple[float, float] | None:
    """A validation curve's last value and how far it moved over the last quarter of training: from
    the last validation at or before 3/4 of the ``trained`` steps (the curve's last step if not
    given) to the last validation. Relative (a share of the earlier value) where lower is better,
    as losses are compared as ratios; absolute where higher is better."""
    if len(curve) < 2:
        return None
    last = trained if trained else max(curve)
    earlier = curve[max((step for step in curve if step <= 0.75 * last), default=min(curve))]
    last = max(curve)
    end = curve[last]
    if better == "lower":
        return end, (end - earlier) / earlier if earlier else math.nan
    return end, end - earlier


def standing(experiment: Experiment, found: dict[str, list[RunResult]]) -> str | None:
    """Where each model's validation curve ends and how far it moved over the last quarter of its
    steps (means over seeds): a model still moving at the end has not converged at this budget."""
    parts = []
    for model, runs in found.items():
        moved = [m for m in (curve_movement(read_curve(r.folder, experiment.curve), experiment.better, steps_of(r))
                             for r in runs) if m is not None]
        if moved:
            end, change = (sum(values) / len(values) for values in zip(*moved))
            shown = f"{change:+.0%}" if experiment.better == "lower" else f"{change:+.3g}"
            parts.append(f"{model} {end:.3g} ({shown})")
    if not parts:
        return None
    how = "relative" if experiment.better == "lower" else "absolute"
    return (f"Where the models stand: {experiment.curve_label} at its last logged value (mean over seeds), and in "
            f"brackets its {how} change since the last value logged at or before 3/4 of the steps trained: "
            f"{', '.join(parts)}.")


def steps_of(run: RunResult) -> int | None:
    """The steps a run trained for, or None when its record has no sessions."""
    steps = trained_steps(run.metrics)
    return steps if isinstance(steps, int) else None


def trained_steps(metrics: dict[str, Any]) -> int | str:
    """The steps a run trained for (its last session's end; an RL run's environment steps, the steps
    of its log), or ``?`` for a record without sessions."""
    if "env_steps" in metrics:
        return int(metrics["env_steps"])
    sessions = metrics.get("train", {}).get("sessions", [])
    return sessions[-1]["to_step"] if sessions else "?"


def run_seconds(metrics: dict[str, Any]) -> float:
    """A run's wall seconds, training and test (one thread: its CPU seconds)."""
    train = metrics.get("train", {}).get("seconds", metrics.get("train_seconds", 0.0))
    return float(train) + float(metrics.get("test_seconds", 0.0))


def best_so_far(curve: dict[int, float], better: str) -> dict[int, float]:
    """The best validation value up to each step (what selects the checkpoint)."""
    best, pick = {}, (min if better == "lower" else max)
    for step in sorted(curve):
        best[step] = curve[step] if not best else pick(curve[step], best[max(best)])
    return best


def plateau_gain(curve: dict[int, float], better: str, chance: float, trained: int | None = None) -> float | None:
    """How much the best validation value improved over the last quarter of the steps trained, as a
    share of the distance from chance to the final best: the plateau criterion (below 0.01: the
    model has plateaued). None for a curve of fewer than two validations."""
    if len(curve) < 2:
        return None
    best = best_so_far(curve, better)
    last = trained if trained else max(curve)
    earlier = best[max((step for step in best if step <= 0.75 * last), default=min(best))]
    final = best[max(best)]
    return abs(final - earlier) / abs(final - chance) if final != chance else math.nan


def plateau_evidence(experiment: Experiment, found: dict[str, list[RunResult]]) -> str | None:
    """The plateau criterion of every model of an experiment with a declared ``curve_chance``."""
    if experiment.curve_chance is None:
        return None
    parts = []
    for model, runs in found.items():
        gains = [g for g in (plateau_gain(read_curve(r.folder, experiment.curve), experiment.better,
                                          experiment.curve_chance, steps_of(r)) for r in runs) if g is not None]
        if gains:
            parts.append(f"{model} {', '.join(f'{g:.1%}' for g in gains)}")
    if not parts:
        return None
    return (f"Plateau: the best {experiment.curve_label} gained, over the last quarter of the steps trained, this share "
            f"of its distance from chance ({experiment.curve_chance:g}), per seed (below 1%: plateaued): "
            f"{'; '.join(parts)}.")


def read_curve(folder: Path, column: str) -> dict[int, float]:
    """Validation ``column`` of a run's ``logs/metrics.csv`` by steps trained (rows where it is set)."""
    path = folder / LOG_FILE
    if not path.is_file():
        return {}
    return {row[STEPS_COLUMN]: row[column] for row in read_log_rows(path) if column in row}


def plot_learning_curves(experiment: Experiment, found: dict[str, list[RunResult]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    drawn = False
    for model, runs in found.items():
        curves = [read_curve(r.folder, experiment.curve) for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]
        axis.plot(steps, [sum(v) / len(v) for v in values], label=f"{model} (n={len(curves)})")
        if len(curves) > 1:  # the range over seeds: with two or three seeds a t-interval would fill the plot
            axis.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.25)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel("training step")
    axis.set_ylabel(experiment.curve_label)
    if experiment.better == "lower" and experiment.curve.endswith(("mse", "loss")):
        axis.set_yscale("log")
    axis.set_title(f"{experiment.name}: mean over seeds, band = their range")
    axis.legend()
    save_figure(figure, path)
    return path


def interval_of_kind(values: list[float], lower_is_better: bool) -> tuple[float, float, float]:
    """(centre, low, high) over seeds, of the kind the verdicts use: where lower is better and every
    value is positive, the geometric mean and its 95% interval (a Student-t interval of the logs,
    taken back: always positive, so a log axis shows all of it); else the mean and its interval."""
    if lower_is_better and all(v > 0 for v in values):
        logs = Estimate.of([math.log(v) for v in values])
        return math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high)
    plain = Estimate.of(values)
    return plain.mean, plain.low, plain.high


def plot_generalisation(experiment: Experiment, found: dict[str, list[RunResult]], path: Path) -> Path | None:
    """Test metric against test length per model, the models side by side at each length: every seed
    as a dot, the centre and 95% interval of the kind the verdicts use (:func:`interval_of_kind`:
    geometric on a log axis where lower is better, arithmetic in the condition's scale, with the
    experiment's chance level, where higher is better), and the trivial or chance level when the task
    reports one."""
    if not experiment.generalisation:
        return None
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    lower = experiment.better == "lower"
    scale = next((c.scale for c in experiment.conditions if c.path.endswith(f".{experiment.generalisation_metric}")),
                 1.0)
    models = [model for model, runs in found.items() if runs]
    drawn = None
    for index, model in enumerate(models):
        runs = found[model]
        lengths = sorted({int(length) for r in runs for length in r.metrics[experiment.generalisation]})
        values = [[scale * r.metrics[experiment.generalisation][str(n)][experiment.generalisation_metric] for r in runs]
                  for n in lengths]
        spread = 0.04 * (max(lengths) - min(lengths) or max(lengths))  # side by side, not on top of each other
        x = [n + spread * (index - (len(models) - 1) / 2) for n in lengths]
        centres = [interval_of_kind(v, lower) for v in values]
        line = axis.errorbar(x, [c for c, _, _ in centres],
                             yerr=[[c - lo for c, lo, _ in centres], [hi - c for c, _, hi in centres]],
                             marker="o", capsize=3, label=f"{model} (n={len(runs)})")
        for position, v in zip(x, values):
            axis.scatter([position] * len(v), v, s=12, alpha=0.5, color=line[0].get_color())
        drawn = runs[0].metrics
    if drawn is None:
        plt.close(figure)
        return None
    for key, label in (("trivial_mse", "predict 1 (trivial)"), ("chance_copy_ce", "chance")):
        if key in drawn:
            axis.axhline(drawn[key], color="grey", linestyle=":", label=label)
    if experiment.chance is not None:
        axis.axhline(experiment.chance, color="grey", linestyle=":", label=f"chance ({experiment.chance:g})")
    if lower:
        axis.set_yscale("log")
    axis.set_xticks(sorted({int(n) for runs in found.values() for r in runs for n in r.metrics[experiment.generalisation]}))
    axis.set_xlabel(f"test {experiment.generalisation}")
    unit = " (%)" if scale == 100 else ""
    kind = "geometric mean" if lower else "mean"
    axis.set_ylabel(f"test {experiment.generalisation_metric}{unit}" + (", log scale" if lower else ""))
    axis.set_title(f"{experiment.name}: dots: seeds; bars: {kind} and its 95% interval", fontsize=9)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def plot_by_step(experiment: Experiment, found: dict[str, list[RunResult]], path: Path) -> Path | None:
    """The experiment's per-step metric (:class:`ByStep`), one panel per test condition: each model's
    mean over seeds at every step with its 95% interval, the condition's reference level (mean over the
    runs) and the step where the model starts to read its own predictions."""
    spec = experiment.by_step
    runs = [r for model_runs in found.values() for r in model_runs]
    if spec is None or not runs:
        return None
    import matplotlib.pyplot as plt

    conditions = list(runs[0].metrics[spec.conditions])
    figure, axes = plt.subplots(1, len(conditions), figsize=(3.3 * len(conditions), 3.4), sharey=True, squeeze=False)
    for axis, condition in zip(axes[0], conditions):
        for model, model_runs in found.items():
            if not model_runs:
                continue
            per_seed = [r.metrics[spec.conditions][condition][spec.metric] for r in model_runs]
            at_step = [Estimate.of(list(values)) for values in zip(*per_seed)]
            steps = range(1, len(at_step) + 1)
            line, = axis.plot(steps, [e.mean for e in at_step], label=f"{model} (n={len(model_runs)})")
            if len(model_runs) > 1:
                axis.fill_between(steps, [e.low for e in at_step], [e.high for e in at_step], alpha=0.2,
                                  color=line.get_color())
        if spec.reference:
            level = statistics.mean(r.metrics[spec.conditions][condition][spec.reference] for r in runs)
            axis.axhline(level, color="grey", linestyle=":", label=spec.reference_label or spec.reference)
        if spec.switch:
            axis.axvline(runs[0].metrics[spec.switch] + 0.5, color="black", linewidth=0.8, linestyle="--",
                         label=spec.switch_label or spec.switch)
        axis.set_title(condition, fontsize=9)
        axis.set_xlabel(spec.step_label)
    axes[0][0].set_ylabel(spec.label)
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(f"{experiment.name}: mean over seeds, band: its 95% interval", fontsize=9)
    save_figure(figure, path)
    return path


def readme_block(suite: Suite, results: Path) -> str:
    """What the README shows of a suite: each experiment's table and verdicts, generated from results."""
    parts = []
    for experiment in suite.experiments:
        parts.append(f"**{experiment.name}** (`{experiment.preset}`" + (f" {' '.join(experiment.overrides)}"
                                                                         if experiment.overrides else "") + ")")
        parts.append("")
        parts.append(experiment_table(experiment, load_results(results, experiment)))
        parts.append("")
    parts += verdict_summary(suite, results)
    return "\n".join(parts).rstrip() + "\n"


def verdict_summary(suite: Suite, results: Path) -> list[str]:
    """Every declared claim of the suite counted by verdict, and the decided ones named: the summary
    is generated from all of them, so none can be left out of it."""
    lines = ["**What the verdicts say** (every declared claim of the suite, counted; the decided ones named):", ""]
    for experiment in suite.experiments:
        found = load_results(results, experiment)
        by_word: dict[str, list[str]] = {}
        for claim in experiment.claims:
            by_word.setdefault(verdict_word(judge(claim, found, experiment)), []).append(
                claim.text + learned_caveat(claim, found, experiment))
        counts = ", ".join(f"{len(texts)} {word}" for word, texts in by_word.items())
        learned = learned_parts(experiment, found)
        lines.append(f"- {experiment.name} ({len(experiment.claims)} claims: {counts})"
                     + "".join(f"; {word}, on the claims that {'; that '.join(texts)}"
                               for word, texts in by_word.items() if word in DECIDED)
                     + (f"; learned the task, seeds per model: {', '.join(learned)}" if learned else ""))
    return lines


def _marks(name: str) -> tuple[str, str]:
    return f"<!-- suite {name}: generated by `brims report {name} --readme`, checked by the tests -->", \
        f"<!-- end of suite {name} -->"


def readme_section(text: str, name: str) -> str | None:
    """The generated block of suite ``name`` in a README's text, or None when it has none."""
    begin, end = _marks(name)
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.DOTALL)
    return None if match is None else match.group(1)


def update_readme(readme: Path, suite: Suite, results: Path) -> bool:
    """Rewrite the suite's block in ``readme``; False when the README has no block for it."""
    text = readme.read_text()
    begin, end = _marks(suite.name)
    if readme_section(text, suite.name) is None:
        return False
    block = readme_block(suite, results)
    text = re.sub(re.escape(begin) + r"\n.*?" + re.escape(end), lambda _: f"{begin}\n{block}{end}", text, flags=re.DOTALL)
    atomic_write_text(readme, text)
    return True


def runs_by_day(suite: Suite, results: Path) -> list[str]:
    """Markdown: from every finished run's own ``train_time.json``, the training sessions per day
    (UTC) and their hours; complete even where a ``brims reproduce`` invocation left no record."""
    days: dict[str, list[float]] = {}
    for experiment in suite.experiments:
        for runs in load_results(results, experiment).values():
            for run in runs:
                path = run.folder / TRAIN_TIME_FILE
                for session in json.loads(path.read_text()).get("sessions", []) if path.is_file() else []:
                    days.setdefault(session["started_at"][:10], []).append(float(session["seconds"]))
    if not days:
        return []
    lines = ["## Training sessions by day", "", ("From each run's own record (`train_time.json`): the training "
             "sessions started that day (UTC; a resumed run has one per start) and their hours, one thread each."), "",
             "| day | sessions | hours |", "|---|---:|---:|"]
    lines += [f"| {day} | {len(seconds)} | {sum(seconds) / 3600:.1f} |" for day, seconds in sorted(days.items())]
    return [*lines, ""]


def write_report(suite: Suite, results: Path) -> Path:
    """``results/<suite>/README.md`` and its figures, from the results alone."""
    record = json.loads((results / "suite.json").read_text()) if (results / "suite.json").is_file() else {}
    sessions = record.get("sessions", [])
    lines = [f"# Suite `{suite.name}`: {suite.title}", "", suite.question, ""]
    own = [f"{e.name} {', '.join(map(str, e.seeds))}" for e in suite.experiments if e.seeds != suite.seeds]
    lines += [f"Reproduce: `brims reproduce {suite.name}` (resumable; `--dry-run` lists the runs). Seeds "
              f"{', '.join(map(str, suite.seeds))} for every model" + (f" (but {'; '.join(own)})" if own else "") +
              "; every model of an experiment has the same "
              "budget and data order; each supervised run's checkpoint is chosen on validation only (an RL run is "
              "tested with its final policy), and every test condition "
              "is scored from that one checkpoint.", ""]
    for experiment in suite.experiments:
        found = load_results(results, experiment)
        lines += [f"## {experiment.name}", ""]
        if experiment.note:
            lines += [experiment.note, ""]
        lines += [experiment_table(experiment, found), ""]
        for kind, plot in (("learning", plot_learning_curves), ("generalisation", plot_generalisation),
                           ("by_step", plot_by_step)):
            figure = plot(experiment, found, results / experiment.name / f"{kind}.png")
            if figure is not None:
                lines += [f"![{kind}]({experiment.name}/{kind}.png)", ""]
        for model, runs in found.items():
            shown = [runs[0].folder / name for name in experiment.run_figures] if runs else []
            shown = [figure for figure in shown if figure.is_file()]
            if shown:
                lines += [f"{model}, seed {runs[0].seed}: " + " ".join(
                    f"![{figure.stem.replace('_', ' ')}]({figure.relative_to(results).as_posix()})" for figure in shown), ""]
        lines += ["Commands (seed `k` of the seeds above; `brims reproduce` runs them, one thread each):", ""]
        for model, overrides in experiment.models.items():
            options = " ".join([*experiment.overrides, *overrides, "train.seed=k", "train.threads=1"])
            lines.append(f"- {model}: `brims train {experiment.preset} --run-dir runs/{suite.name}/"
                         f"{experiment.name}/{model}/seedk --set {options}`")
        lines.append("")
        times = [(model, r.seed, run_seconds(r.metrics)) for model, runs in found.items() for r in runs]
        if times:
            lines.append("Wall time per run (train + test), minutes: " + ", ".join(
                f"{model} s{seed} {seconds / 60:.1f}" for model, seed, seconds in times) + ".")
            total = sum(t for _, _, t in times)
            tested = sum(float(r.metrics.get("test_seconds", 0.0)) for runs in found.values() for r in runs)
            share = f", {100 * tested / total:.0f}% of it testing" if total > 0 else ""
            lines.append(f"CPU-hours of the experiment: {total / 3600:.1f} (its {len(times)} runs, one thread "
                         f"each){share}.")
            lines.append("")
    lines += ["## What the verdicts say", "", *verdict_summary(suite, results)[2:], ""]
    if sessions:
        lines += ["## Sessions", "", ("One row per `brims reproduce` invocation. Ended \"no\": killed, or still running (its wall "
                  "time is up to its last finished run); \"interrupted\": stopped with Ctrl-C."), "",
                  "| started (UTC) | wall | ended | jobs | machine | versions | runs finished |",
                  "|---|---:|---|---:|---|---|---:|"]
        for session in sessions:
            m = session["machine"]
            hardware = f"{m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
            finished = sum(1 for outcome in session["runs"].values() if outcome == "finished")
            ended = {True: "yes", False: "no"}.get(session.get("ended", True), session.get("ended"))
            lines.append(f"| {session['started_at']} | {session['wall_seconds'] / 60:.1f} min | {ended} | "
                         f"{session['jobs']} | "
                         f"{hardware} | brims {m['brims']}, torch {m['torch']}, lightning {m['lightning']} | "
                         f"{finished} |")
        lines.append("")
    lines += runs_by_day(suite, results)
    path = results / REPORT_FILE
    atomic_write_text(path, "\n".join(lines))
    return path
