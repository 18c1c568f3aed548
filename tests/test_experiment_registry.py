"""One experiment, one module: the registry is the only place that lists experiments, the generic
harness asks it instead of branching on an experiment's name, nothing under ``train/`` imports RL,
and a run builds its config and its task once."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from cli_support import brims
from test_run_lifecycle import lifecycle_config
from test_training_runs import write_config

from brims_experiments.experiments import EXPERIMENTS, experiment, experiment_of
from brims_experiments.train.commands import preset_names, resolve_config

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "brims_experiments"
NAMES = frozenset(EXPERIMENTS)

# The generic harness: what must ask the registry. The experiment modules (experiments/<name>.py,
# rl/) and the registry itself (experiments/__init__.py) are where names belong.
GENERIC = ["train/*.py", "config_files.py", "devices.py", "run_folder.py", "checkpoints.py", "figures.py", "run_lock.py",
           "cli.py", "trained.py", "reproduce/*.py", "experiments/base.py", "experiments/generated.py"]


def generic_modules() -> list[Path]:
    return sorted({path for pattern in GENERIC for path in PACKAGE.glob(pattern)})


def _names_in(node: ast.AST) -> list[str]:
    """The experiment names ``node`` is (a string) or holds (a tuple, list or set of strings)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [item.value for item in items if isinstance(item, ast.Constant) and item.value in NAMES]


def _is_task_value(node: ast.AST) -> bool:
    """``task`` or ``<something>.task``: an experiment's name held in a variable."""
    return (isinstance(node, ast.Name) and node.id == "task") or (isinstance(node, ast.Attribute) and node.attr == "task")


def branches_on_names(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` compares a value to an experiment name, indexes by one (a literal name or a
    ``.task`` value, with ``[]`` or ``.get``), or writes a dict keyed by names: ``file:line: code``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        hit = False
        if isinstance(node, ast.Compare):
            hit = any(_names_in(operand) for operand in [node.left, *node.comparators])
        elif isinstance(node, ast.Subscript):
            hit = bool(_names_in(node.slice)) or _is_task_value(node.slice)
        elif isinstance(node, ast.Dict):
            hit = any(key is not None and _names_in(key) for key in node.keys)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            hit = any(_names_in(arg) or _is_task_value(arg) for arg in node.args)
        if hit:
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_every_preset_loads_through_the_registry_and_names_a_registered_experiment():
    named = set()
    for name in preset_names():
        path = resolve_config(name)
        found = experiment_of(path)
        config = found.load_config(path)
        assert config.task in EXPERIMENTS, name
        assert experiment(config.task) is found and found.name == config.task, name
        assert found.budget(config)
        named.add(config.task)
    assert named == NAMES, "every experiment has a preset"


def test_every_registered_experiment_is_its_module_s_one_class():
    for name in EXPERIMENTS:
        found = experiment(name)
        assert found.name == name
        for method in ("load_config", "budget", "train_command", "test_command", "compare", "format_table",
                       "data_words", "load_trained"):
            assert callable(getattr(found, method)), (name, method)


def test_the_checker_finds_the_branches_the_harness_used_to_have():
    """The checker is meaningful: it flags each kind of branch the harness had before the registry."""
    old = '''
if config.task == "lm": pass
if task_of(path) == "rl": pass
if task in ("adding", "lm"): pass
if any(run.get("task") != "rl" for run in runs): pass
header = {"lm": 0.6, "video": 0.5}.get(config.task, 1.0)
key = SUMMARIES[config.task][-1]
metric = LEARNING_METRIC["adding"]
task = runs[0].get("task", "seqimage")
'''
    lines = {int(hit.split(":")[1]) for hit in branches_on_names(old)}
    assert lines == set(range(2, 10))  # every line


def test_the_checker_fails_on_the_harness_before_the_registry():
    """The sources of the commit before the registry (when this checkout has its history) branch on names."""
    before = "64d817d"
    found = []
    for path in ("train/commands.py", "train/plots.py", "train/config.py", "train/tasks.py", "runs.py"):
        shown = subprocess.run(["git", "show", f"{before}:src/brims_experiments/{path}"], capture_output=True,
                               text=True, cwd=PACKAGE, check=False)
        if shown.returncode != 0:
            pytest.skip(f"no commit {before} in this checkout")
        found += branches_on_names(shown.stdout, path)
    assert len(found) > 20


def test_the_generic_harness_does_not_branch_on_experiment_names():
    assert generic_modules()
    found = [hit for path in generic_modules()
             for hit in branches_on_names(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert not found, "ask the experiment (brims_experiments.experiments) instead:\n" + "\n".join(found)


def imported_modules(source: str, package: str) -> list[str]:
    """Every module a module of ``package`` imports (and each name it imports from one, as
    ``module.name``), at its top or inside a function, relative imports made absolute."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_nothing_under_train_imports_rl():
    modules = sorted((PACKAGE / "train").rglob("*.py"))
    assert modules
    found = [f"{path.name}: {name}" for path in modules
             for name in imported_modules(path.read_text(), "brims_experiments." + ".".join(
                 path.relative_to(PACKAGE).parent.parts))
             if name == "brims_experiments.rl" or name.startswith("brims_experiments.rl.")]
    assert not found, found


def test_the_import_walk_sees_every_way_to_import_rl():
    """What train/commands.py did before the registry, and the other spellings of it."""
    source = """
def run_test(args):
    from brims_experiments.rl.config import task_of
def a():
    import brims_experiments.rl.run
def b():
    from brims_experiments import rl
def c():
    from ..rl.commands import run_train
"""
    names = imported_modules(source, "brims_experiments.train")
    rl = [name for name in names if name == "brims_experiments.rl" or name.startswith("brims_experiments.rl.")]
    assert {"brims_experiments.rl.config", "brims_experiments.rl.run", "brims_experiments.rl",
            "brims_experiments.rl.commands"} <= set(rl)


def test_a_run_builds_its_config_and_its_task_once(tmp_path, monkeypatch):
    from brims_experiments.train.config import ExperimentConfig
    from brims_experiments.train.tasks import Task

    counts = {"config": 0, "task": 0}
    post_init, task_init = ExperimentConfig.__post_init__, Task.__init__

    def counted_config(self):
        counts["config"] += 1
        post_init(self)

    def counted_task(self, config):
        counts["task"] += 1
        task_init(self, config)

    monkeypatch.setattr(ExperimentConfig, "__post_init__", counted_config)
    monkeypatch.setattr(Task, "__init__", counted_task)
    config = write_config(tmp_path / "run.yaml", lifecycle_config(max_steps=3))
    folder = tmp_path / "run"
    assert brims("train", str(config), "--run-dir", str(folder), "--no-progress", "--set",
                 "train.validate_every=3") == 0
    assert (folder / "metrics.json").is_file()  # trained, then tested
    assert counts == {"config": 1, "task": 1}
