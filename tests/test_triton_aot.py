"""The Triton backend's kernels compile for real GPUs, and fit them, without a GPU here.

Launches of ``backend="triton"`` are captured from a model's step on the CPU as a run makes them
(each layer's forward and backward kernel; the constexprs, dtypes and divisibility Triton
specialises on) and compiled by ``triton.compile`` for sm_80 (A100) and sm_90 (H100/H200) through
Triton's whole pipeline to a cubin, with the ptxas inside the triton wheel (benchmarks/triton_aot.py
does the work and prints the resource tables in docs/speed.md). Launches that specialise alike are
compiled once. Each compile runs in a subprocess of its own, so that an LLVM assertion, which aborts
the process, fails its case with its message instead of killing pytest. A kernel fails on a compile
error, on shared memory past the architecture's per-block limit (it could not launch), and on spills
past ``aot.SPILL_BUDGET``.

The interpreter tests (tests/test_triton_backend.py) cannot see any of this: the interpreter runs
the kernels' Python, not Triton's front end, its layouts or ptxas.

The default run compiles ``aot.DEFAULT_LAUNCHES``, two at a time: the paper presets' BRIMs training
step as it launches (float32, and bf16 autocast's TF32 dots) and every code path of the kernels at
small sizes (30 kernels x 2 archs). ``-m exhaustive`` compiles every distinct kernel of every model:
the released and small ones and every preset's and suite's modular core, LSTM and GRU, training and
eval, float32, TF32 and bf16 autocast, a batch that is a multiple of 16 and one that is not (416
kernels x 2 archs; not timed in full, roughly half an hour to an hour at two jobs on an idle
2-core machine, from the default run's CPU time per kernel: docs/speed.md).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("triton_aot", ROOT / "benchmarks" / "triton_aot.py")
aot = importlib.util.module_from_spec(_spec)
sys.modules["triton_aot"] = aot
_spec.loader.exec_module(aot)

JOBS = 2  # compiles at a time: CI has two cores


def _backend_missing() -> str | None:
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError as error:
        return f"triton or its CUDA backend is not installed: {error}"
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for tool in ("ptxas", "cuobjdump"):
        if not (bin_dir / tool).exists() and shutil.which(tool) is None:
            return f"triton's CUDA backend has no {tool} (looked in {bin_dir})"
    return None


_missing = _backend_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

_RESULTS: dict[tuple[int, str], dict] = {}  # (arch, kernel key) -> result: each kernel compiled once per run


def _check(launch_sets: list[aot.Launches]) -> None:
    """Compile what ``launch_sets`` launch (what is not compiled yet) and fail on any problem of any kernel."""
    kernels = aot.kernels_of(launch_sets)  # captured here, one at a time (capture patches the fused module)
    aot.compile_all(kernels, jobs=JOBS, done=_RESULTS)
    found = [problem for kernel in kernels for arch in aot.ARCHS
             for problem in aot.problems(kernel, arch, _RESULTS[(arch, kernel.key)])]
    assert not found, "\n\n".join(found)


@pytest.fixture(scope="module")
def default_kernels_compiled() -> None:
    """Every default kernel compiled up front, two at a time (the tests below then only read results)."""
    aot.compile_all(aot.kernels_of(aot.DEFAULT_LAUNCHES), jobs=JOBS, done=_RESULTS)


@pytest.mark.parametrize("launches", aot.DEFAULT_LAUNCHES, ids=lambda launches: launches.name)
def test_kernels_compile_and_fit(launches, default_kernels_compiled):
    """Both architectures, each kernel of the launch set (includes the sm_90 LSTM layer-0 forward at
    the released sizes that once aborted LLVM: the abort depends on the sizes)."""
    _check([launches])


@pytest.mark.exhaustive
@pytest.mark.parametrize("setting", aot.SETTINGS)
@pytest.mark.parametrize("mode", aot.MODES)
@pytest.mark.parametrize("cell", aot.CELLS)
def test_every_models_kernels_compile_and_fit(cell, mode, setting):
    """Every model's launches with this cell, mode and setting, at both batches, both architectures."""
    _check([launches for launches in aot.all_launches()
            if (launches.cell, launches.mode, launches.setting) == (cell, mode, setting)])


def test_models_are_every_presets_and_suites_modular_core():
    """Every preset and every suite's modular model is a model (or an alias of one), but those with
    attended_norm (the triton backend refuses it), and the paper presets' BRIMs is the released
    configuration."""
    from brims_experiments.reproduce.suites import load_suite
    from brims_experiments.suites import suite_names
    from brims_experiments.tasks.cores import MODULAR_KINDS
    from brims_experiments.train.commands import load_any_config, preset_names, resolve_config

    names = {name for model in aot.models() for name in aot.aliases(model)}
    assert set(preset_names()) <= names
    for suite in suite_names():
        for experiment in load_suite(suite).experiments:
            for model, overrides in experiment.models.items():
                core = load_any_config(resolve_config(experiment.preset), [*experiment.overrides, *overrides]).model.core
                fused = core.kind in MODULAR_KINDS and not core.option("attended_norm")  # triton refuses attended_norm
                assert (f"{suite}/{experiment.name}/{model}" in names) == fused, (suite, model)
    assert aot.canonical("smnist-paper") == "released"
    for launches in aot.DEFAULT_LAUNCHES:
        aot.canonical(launches.model)


def test_capture_sees_every_launch_with_the_launch_options():
    """The capture records one forward and one backward per layer, with fused.LAUNCH_OPTIONS'
    ``num_warps``/``num_stages`` and dropout's constexprs as training and eval set them."""
    from brims.backends import fused

    for mode, drop in (("train", True), ("eval", False)):
        records = aot.capture(aot.Launches("small", "lstm", mode, "fp32", 20))
        assert [(r["kernel"], r["layer"]) for r in records] == [
            ("layer_step_forward", 0), ("layer_step_forward", 1), ("layer_step_backward", 1), ("layer_step_backward", 0)]
        for r in records:
            assert r["options"] == fused.LAUNCH_OPTIONS
            assert r["constexprs"]["DROP_IN"] is drop and r["constexprs"]["DROP_COMM"] is drop
            assert r["signature"]["active_ptr"] == "*i8" and r["signature"]["h_ptr"] == "*fp32"
        assert [r["constexprs"]["S"] for r in records] == [2, 1, 1, 2]  # top-down slot in layer 0 only


def test_capture_follows_torchs_float32_matmuls_and_autocast():
    """float32 by default: IEEE dots. TF32 allowed: TF32 dots. bf16 autocast: the kernels still take
    float32 (the layer casts the slots to the state's dtype) with TF32 dots, the backward too, though
    it runs after autocast: the same kernels as with TF32 allowed."""
    records = {setting: aot.capture(aot.Launches("small", "gru", "train", setting, 20)) for setting in aot.SETTINGS}
    assert {r["constexprs"]["PRECISION"] for r in records["fp32"]} == {"ieee"}
    assert {r["constexprs"]["PRECISION"] for r in records["tf32"]} == {"tf32"}
    pointers = {t for r in records["bf16-autocast"] for t in r["signature"].values() if t.startswith("*")}
    assert pointers == {"*fp32", "*i8"}
    assert list(map(aot.specialisation, records["bf16-autocast"])) == list(map(aot.specialisation, records["tf32"]))


def test_capture_specialises_the_batch_on_divisibility_by_16():
    """A real launch at a batch of 64 compiles another kernel than one at 250: Triton marks an integer
    argument divisible by 16."""
    def batch_attrs(batch):
        record = aot.capture(aot.Launches("small", "lstm", "eval", "fp32", batch))[0]
        index = list(record["signature"]).index("B")
        return [v for k, v in record["attrs"] if k == [index]]

    assert batch_attrs(32) == [[["tt.divisibility", 16]]] and batch_attrs(20) == []


def test_an_abort_in_the_compiler_fails_the_case_with_its_message(monkeypatch, tmp_path):
    """A compile that kills its process (as LLVM's assertions do, SIGABRT) comes back as a failed case
    carrying the process's stderr, and pytest lives on."""
    script = tmp_path / "aborts.py"
    script.write_text("import os, sys\nprint('Assertion `it holds` failed.', file=sys.stderr, flush=True)\nos.abort()\n")
    monkeypatch.setattr(aot, "__file__", str(script))
    record = aot.capture(aot.Launches("small", "lstm", "eval", "fp32", 20))[0]
    result = aot.run_case(record, 90)
    assert not result["ok"]
    assert "signal 6" in result["error"] and "Assertion `it holds` failed." in result["error"]
