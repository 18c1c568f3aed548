"""Compile the Triton backend's kernels for sm_80 and sm_90 without a GPU, and report their resources.

Each kernel launch of ``backend="triton"`` is captured as it would be made (arguments' dtypes,
constexprs, ``num_warps``/``num_stages`` from :func:`brims.backends.fused.launch_options`) by a
forward and backward of a model on the CPU whose launches are recorded instead of run. Each is then
compiled by ``triton.compile`` for a ``GPUTarget("cuda", arch, 32)`` through Triton's whole
pipeline to a cubin with the ptxas inside the triton wheel, in a subprocess of its own (an LLVM
assertion aborts the process: it must be a failed case, not a dead caller). ptxas ``-v`` reports
the spills, ``cuobjdump --dump-resource-usage`` the cubin's registers and stack, the compiled
metadata the shared memory. The ``small`` configuration is tests/support.py's two-layer one.

    python benchmarks/triton_aot.py                       # every case, a markdown table (about 11 min)
    python benchmarks/triton_aot.py --configs small --archs 90 --jobs 2
    python benchmarks/triton_aot.py --num-stages 3 --json before.json   # Triton's default stages
    python benchmarks/triton_aot.py --compare before.json                # before / after, as in docs/speed.md

tests/test_triton_aot.py runs the same cases and checks them against the limits below.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ARCHS = (80, 90)
# The most dynamic shared memory one block may opt into (CUDA programming guide, compute capabilities).
SHARED_LIMIT = {80: 166_912, 90: 232_448}
CONFIGS = ("released", "small")
CELLS = ("lstm", "gru")
MODES = ("train", "eval")
KERNELS = ("forward", "backward")
BATCH = 20  # two programs; the batch is a runtime argument, so any batch compiles the same


@dataclasses.dataclass(frozen=True)
class Case:
    arch: int
    config: str
    cell: str
    mode: str
    layer: int
    kernel: str

    @property
    def name(self) -> str:
        return f"sm{self.arch}-{self.config}-{self.cell}-{self.mode}-L{self.layer}-{self.kernel}"


def model_config(config: str, cell: str):
    """``released``: the defaults (two layers of 300 units, 6 and 3 modules, 4 and 2 active, default
    heads); ``small``: tests/support.py's two-layer configuration with top-down and communication."""
    from brims import BRIMsConfig

    if config == "released":
        return BRIMsConfig(300, cell=cell, backend="triton")
    if config == "small":
        return BRIMsConfig(5, hidden_sizes=(12, 10), num_modules=(4, 2), top_k=(2, 1), input_heads=2,
                           input_key_size=4, input_value_factor=2, comm_heads=3, comm_key_size=3,
                           comm_value_size=5, attention_dropout=0.1, cell=cell, backend="triton")
    raise ValueError(f"unknown config {config!r}")


def capture(config: str, cell: str, mode: str, overrides: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The launches of one step forward and backward, in order: ``[{kernel, layer, signature,
    constexprs, attrs, options}]``. The kernels are not run (their outputs stay uninitialised)."""
    import torch

    from brims import BRIMs
    from brims.backends import fused

    records: list[dict[str, Any]] = []

    def record(kernel, batch, args, constants):
        signature, attrs = {}, {}
        names = kernel.arg_names
        for index, value in enumerate(args):
            if isinstance(value, torch.Tensor):
                signature[names[index]] = "*" + {torch.float32: "fp32", torch.float64: "fp64", torch.int8: "i8",
                                                 torch.bfloat16: "bf16", torch.float16: "fp16"}[value.dtype]
                if value.data_ptr() % 16 == 0:  # what a real launch specialises on
                    attrs[(index,)] = [["tt.divisibility", 16]]
            else:
                signature[names[index]] = "i32"
        for name in constants:
            signature[name] = "constexpr"
        options = fused.launch_options(kernel.__name__, constants)
        options.update(overrides or {})
        layer = sum(1 for r in records if r["kernel"] == kernel.__name__)
        records.append({"kernel": kernel.__name__, "layer": layer, "signature": signature,
                            "constexprs": dict(constants), "attrs": [[list(k), v] for k, v in attrs.items()],
                            "options": options})

    saved = fused._launch, fused._check_device
    fused._launch, fused._check_device = record, (lambda x: None)
    try:
        with torch.random.fork_rng():  # leaves the caller's random state as it was
            torch.manual_seed(0)
            model = BRIMs.from_config(model_config(config, cell)).train(mode == "train")
            x = torch.randn(2 if config == "small" else 1, BATCH, model.config.input_size)
            output, _ = model(x)
            output.float().nan_to_num().sum().backward()
    finally:
        fused._launch, fused._check_device = saved
    # Step 1 repeats step 0's launches: keep one step (layer l forward, ..., then the backward's).
    forward = [r for r in records if r["kernel"] == "layer_step_forward"]
    backward = [r for r in records if r["kernel"] == "layer_step_backward"]
    layers = len(model.config.hidden_sizes)
    for r in forward:
        r["layer"] %= layers
    for r in backward:  # the backward runs the layers last to first
        r["layer"] = layers - 1 - r["layer"] % layers
    return forward[:layers] + backward[:layers]


_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_record(record: dict[str, Any], arch: int, kernels: Any) -> dict[str, Any]:
    """``triton.compile`` one captured launch for ``sm_<arch>``: shared bytes, registers, spills (bytes
    of local memory per thread, as cuobjdump reports it), stack, seconds. Raises what compiling raises."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    kernel = getattr(kernels, record["kernel"])
    attrs = {tuple(k): v for k, v in record["attrs"]}
    source = triton.compiler.ASTSource(fn=kernel, signature=record["signature"], constexprs=record["constexprs"],
                                       attrs=attrs)
    start = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # knobs.nvidia.dump_ptxas_log prints ptxas -v's report
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=record["options"])
    seconds = time.perf_counter() - start
    spilled = _SPILLS.search(log.getvalue())
    if spilled is None:
        raise RuntimeError(f"no spill line in ptxas -v's output:\n{log.getvalue()[-2000:]}")
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(bin_dir / "cuobjdump"), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    found = _RESOURCE.search(usage)
    if found is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{usage}")
    registers, stack, static_shared, local = map(int, found.groups())
    return dict(shared=compiled.metadata.shared, registers=registers, spills=int(spilled.group(1)),
                spill_loads=int(spilled.group(2)), local=local, stack=stack,
                static_shared=static_shared, seconds=round(seconds, 1), **record["options"])


def _worker(spec: dict[str, Any]) -> None:
    """Subprocess entry: compile one captured launch, print one JSON line. Only triton is imported
    (the kernels' file by its path, not the brims package and torch): a case starts in a second."""
    import importlib.util

    module = importlib.util.spec_from_file_location("brims_triton_kernels", spec["kernels"])
    kernels = importlib.util.module_from_spec(module)
    module.loader.exec_module(kernels)
    print("RESULT " + json.dumps(compile_record(spec["record"], spec["arch"], kernels)), flush=True)


def worker_environment() -> dict[str, str]:
    """The compile subprocesses' environment: the real compiler, not the interpreter, on one thread,
    with a cache of their own (a case is always compiled, never read from a cache)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(OMP_NUM_THREADS="1", TRITON_ALWAYS_COMPILE="1", CUDA_VISIBLE_DEVICES="")
    env.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="brims-triton-aot-"))
    return env


_CAPTURED: dict[tuple, list[dict[str, Any]]] = {}


def record_of(case: Case, overrides: dict[str, int] | None = None) -> dict[str, Any]:
    """The captured launch of ``case`` (one capture per config, cell, mode and overrides)."""
    key = (case.config, case.cell, case.mode, tuple(sorted((overrides or {}).items())))
    if key not in _CAPTURED:
        _CAPTURED[key] = capture(case.config, case.cell, case.mode, overrides)
    kernel = f"layer_step_{case.kernel}"
    return next(r for r in _CAPTURED[key] if r["kernel"] == kernel and r["layer"] == case.layer)


def run_case(case: Case, overrides: dict[str, int] | None = None, timeout: float = 600) -> dict[str, Any]:
    """One case compiled in a fresh Python: ``{ok, ..resources}`` (``spills``: bytes of spill stores
    per thread, ptxas -v's count), or ``{ok: False, error}`` with the subprocess's stderr (an
    LLVM assertion's abort, a CompilationError's traceback, a timeout)."""
    import importlib.util

    kernels = importlib.util.find_spec("brims.backends.triton_kernels").origin
    spec = json.dumps({"record": record_of(case, overrides), "arch": case.arch, "kernels": kernels})
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", "-"], check=False, input=spec, capture_output=True,
                              text=True, env=worker_environment(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "wall": timeout}
    wall = round(time.perf_counter() - start, 1)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(ok=True, wall=wall, **json.loads(line[len("RESULT "):]))
    signal = f" (signal {-done.returncode})" if done.returncode < 0 else ""
    error = (done.stderr or done.stdout).strip()
    return {"ok": False, "wall": wall, "error": f"exit status {done.returncode}{signal}:\n" + error[-4000:]}


def all_cases(archs=ARCHS, configs=CONFIGS, cells=CELLS, modes=MODES, kernels=KERNELS, layers=(0, 1)) -> list[Case]:
    return [Case(arch, config, cell, mode, layer, kernel)
            for config in configs for cell in cells for mode in modes for layer in layers
            for kernel in kernels for arch in archs]


def _cell(result: dict[str, Any] | None, arch: int) -> str:
    """``registers / shared / spills`` of one result, or why it has none."""
    if result is None:
        return "not run"
    if not result["ok"]:
        error = result["error"]
        if "SLPVectorizer" in error:
            return "**LLVM abort** (SLP vectoriser)"
        if "Return type mismatch" in error:
            return "**CompilationError** (return types)"
        return "**failed**: " + error.strip().splitlines()[-1][:80]
    fits = "" if result["shared"] <= SHARED_LIMIT[arch] else " **over**"
    return f"{result['registers']} / {result['shared']:,}{fits} / {result['spills']:,}"


def _table(cases: list[Case], results: list[dict[str, Any]]) -> str:
    lines = [("| arch | config | cell | mode | layer | kernel | warps / stages | registers / shared (B) / spills (B) "
             "| compile (s) |"), "|---|---|---|---|---:|---|---|---|---:|"]
    for case, r in zip(cases, results):
        options = f"{r['num_warps']} / {r['num_stages']}" if r["ok"] else ""
        lines.append(f"| sm_{case.arch} | {case.config} | {case.cell} | {case.mode} | {case.layer} | {case.kernel} "
                     f"| {options} | {_cell(r, case.arch)} | {r.get('seconds', '')} |")
    return "\n".join(lines)


def _comparison(before: list[dict[str, Any]], cases: list[Case], results: list[dict[str, Any]]) -> str:
    earlier = {Case(**b["case"]): b for b in before}
    lines = [("| arch | config | cell | mode | layer | kernel | before: registers / shared (B) / spills (B) "
             "| after | after: compile (s) |"), "|---|---|---|---|---:|---|---|---|---:|"]
    for case, r in zip(cases, results):
        lines.append(f"| sm_{case.arch} | {case.config} | {case.cell} | {case.mode} | {case.layer} | {case.kernel} "
                     f"| {_cell(earlier.get(case), case.arch)} | {_cell(r, case.arch)} | {r.get('seconds', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--archs", nargs="+", type=int, default=list(ARCHS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--layers", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    parser.add_argument("--num-stages", type=int, help="override launch_options' num_stages")
    parser.add_argument("--num-warps", type=int, help="override launch_options' num_warps")
    parser.add_argument("--jobs", type=int, default=1, help="compiles at a time")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--compare", type=Path, help="a --json file of an earlier run: print before / after")
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(sys.stdin.read() if args.worker == "-" else args.worker))
        return
    overrides = {k: v for k, v in (("num_stages", args.num_stages), ("num_warps", args.num_warps)) if v}
    cases = all_cases(args.archs, args.configs, args.cells, args.modes, args.kernels, args.layers)
    for case in cases:  # captured here, one at a time: capture() patches the fused module
        record_of(case, overrides)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(c, overrides), cases))
    if args.compare:
        print(_comparison(json.loads(args.compare.read_text()), cases, results))
    else:
        print(_table(cases, results))
    if args.json:
        args.json.write_text(json.dumps([dict(case=dataclasses.asdict(c), **r) for c, r in zip(cases, results)], indent=1))


if __name__ == "__main__":
    main()
