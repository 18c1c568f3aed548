"""The Triton backend's kernels compile for real GPUs, and fit them, without a GPU here.

Every launch ``backend="triton"`` makes (forward and backward kernel, each layer, LSTM and GRU,
training and eval, float32) is captured from a model's step on the CPU and compiled by
``triton.compile`` for sm_80 (A100) and sm_90 (H100/H200) through Triton's whole pipeline to a
cubin, with the ptxas inside the triton wheel (benchmarks/triton_aot.py does the work; it also
prints the resource table in docs/speed.md). Each compile runs in a subprocess of its own, so that
an LLVM assertion, which aborts the process, fails its case with its message instead of killing
pytest. A case fails on a compile error, on shared memory past the architecture's per-block limit
(the kernel could not launch), and on spills past ``SPILL_BUDGET``.

The interpreter tests (tests/test_triton_backend.py) cannot see any of this: the interpreter runs
the kernels' Python, not Triton's front end, its layouts or ptxas.

The default run compiles the tests' small configuration (every code path: cell x dropout x
top-down slot count x kernel x architecture, 2-8 s a case) and every case of the released
configuration's sizes (5-22 s a case, two at a time).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("triton_aot", ROOT / "benchmarks" / "triton_aot.py")
aot = importlib.util.module_from_spec(_spec)
sys.modules["triton_aot"] = aot
_spec.loader.exec_module(aot)

# Bytes of spill stores per thread (ptxas -v) a kernel may have, per configuration. A spill is a
# slowdown, not an error, and ptxas moves a few bytes between versions: the budgets catch a kernel
# that falls off a cliff, as these did before their dots were chunked (10-84 KB a thread at the
# released sizes, at 32 registers). Measured now (Triton 3.9.0): the tests' sizes 0-40 bytes; the
# released sizes 8-312 at 50-unit modules and 264-3,112 at 100-unit modules, the most in the
# layer-1 forward, whose communication dots still take whole 128-wide tiles (docs/speed.md).
SPILL_BUDGET = {"small": 256, "released": 4096}


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

SMALL = aot.all_cases(configs=("small",))
RELEASED = aot.all_cases(configs=("released",))


def _check(case: aot.Case, result: dict | None = None) -> dict:
    result = aot.run_case(case) if result is None else result
    assert result["ok"], f"{case.name} does not compile:\n{result['error']}"
    limit = aot.SHARED_LIMIT[case.arch]
    assert result["shared"] <= limit, (
        f"{case.name}: {result['shared']:,} bytes of shared memory, past sm_{case.arch}'s {limit:,} per block")
    budget = SPILL_BUDGET[case.config]
    assert result["spills"] <= budget, (
        f"{case.name}: {result['spills']:,} bytes of spill stores per thread at {result['registers']} registers, "
        f"past the budget of {budget:,}")
    return result


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.name)
def test_kernel_compiles_and_fits_at_the_tests_sizes(case):
    _check(case)


@pytest.fixture(scope="module")
def released_results() -> dict[str, dict]:
    """Every released-size case compiled two at a time (each compile is a subprocess of its own, and
    CI has two cores): about 3 minutes instead of 6."""
    for case in RELEASED:  # the launches are captured in this process, one at a time (not thread-safe)
        aot.record_of(case)
    with ThreadPoolExecutor(2) as pool:
        return {case.name: result for case, result in zip(RELEASED, pool.map(aot.run_case, RELEASED))}


@pytest.mark.parametrize("case", RELEASED, ids=lambda c: c.name)
def test_kernel_compiles_and_fits_at_the_released_sizes(case, released_results):
    """The released configuration's sizes (issue 23: in CI, for both architectures), including the
    sm_90 LSTM layer-0 forward that once aborted LLVM: the abort depends on the sizes, which the
    small configuration does not reach."""
    _check(case, released_results[case.name])


def test_capture_sees_every_launch_with_the_launch_options():
    """The capture records one forward and one backward per layer, with fused.launch_options'
    ``num_warps``/``num_stages`` and dropout's constexprs as training and eval set them."""
    from brims.backends import fused

    for mode, drop in (("train", True), ("eval", False)):
        records = aot.capture("small", "lstm", mode)
        assert [(r["kernel"], r["layer"]) for r in records] == [
            ("layer_step_forward", 0), ("layer_step_forward", 1), ("layer_step_backward", 1), ("layer_step_backward", 0)]
        for r in records:
            assert r["options"] == fused.launch_options(r["kernel"], r["constexprs"])
            assert r["constexprs"]["DROP_IN"] is drop and r["constexprs"]["DROP_COMM"] is drop
            assert r["signature"]["active_ptr"] == "*i8" and r["signature"]["h_ptr"] == "*fp32"
        assert [r["constexprs"]["S"] for r in records] == [2, 1, 1, 2]  # top-down slot in layer 0 only


def test_an_abort_in_the_compiler_fails_the_case_with_its_message(monkeypatch, tmp_path):
    """A compile that kills its process (as LLVM's assertions do, SIGABRT) comes back as a failed case
    carrying the process's stderr, and pytest lives on."""
    script = tmp_path / "aborts.py"
    script.write_text("import os, sys\nprint('Assertion `it holds` failed.', file=sys.stderr, flush=True)\nos.abort()\n")
    monkeypatch.setattr(aot, "__file__", str(script))
    result = aot.run_case(SMALL[0])
    assert not result["ok"]
    assert "signal 6" in result["error"] and "Assertion `it holds` failed." in result["error"]
