"""Compile the Triton backend's kernels for sm_80 and sm_90 without a GPU, and report their resources.

A kernel launch of ``backend="triton"`` is specialised on its constexprs (the layer's sizes, the
dropout switches, the dots' precision), its arguments' dtypes, and the divisibility by 16 of its
pointers and of its batch argument (Triton specialises an integer argument that is a multiple of
16). Each launch is captured as a run would make it (the launch options from
:data:`brims.backends.fused.LAUNCH_OPTIONS`) by a step forward and backward of a model on the CPU
whose launches are recorded instead of run, under each way a run sets torch's float32 matmuls
(``SETTINGS``), for a batch that is a multiple of 16 and one that is not (``BATCHES``). Launches
that specialise alike are one *kernel*, compiled once per architecture by ``triton.compile`` for a
``GPUTarget("cuda", arch, 32)`` through Triton's whole pipeline to a cubin with the ptxas inside the
triton wheel, in a subprocess of its own (an LLVM assertion aborts the process: it must be a failed
case, not a dead caller). ptxas ``-v`` reports the spills, ``cuobjdump --dump-resource-usage`` the
cubin's registers and stack, the compiled metadata the shared memory.

The models (:func:`models`): ``released`` (the defaults, two layers of 300 units, 6 and 3 modules:
the ``paper`` presets' BRIMs), ``small`` (tests/support.py's two-layer configuration), and every
modular core of every preset in ``brims_experiments/configs`` and of every suite in
``brims_experiments/suites`` (the RIMs and no-top-down variants as the suites set them), each also
with a GRU cell.

    python benchmarks/triton_aot.py                        # the default launches (tests/test_triton_aot.py's), a table
    python benchmarks/triton_aot.py --all --jobs 2 --json all.json        # every kernel of every model (~2 h a job)
    python benchmarks/triton_aot.py --jobs 2 --write-docs docs/speed.md   # docs/speed.md's tables (the default launches)
    python benchmarks/triton_aot.py --all --from-json all.json            # all.json's tables, compiling nothing again
    python benchmarks/triton_aot.py --num-stages 3 --json before.json     # Triton's default stages

tests/test_triton_aot.py compiles the same kernels and checks them against the limits below.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
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
# Bytes of spill stores per thread (ptxas -v) a kernel may have. A spill is a slowdown, not an error,
# and ptxas moves a few bytes between versions: the budget catches a kernel that falls off a cliff, as
# these did before their dots were chunked (10-79 KB a thread at the released sizes, at 32 registers).
# Measured (Triton 3.9.0, docs/speed.md): at most 40 bytes at the tests' small sizes, and at most
# 3,112 over every kernel of every preset, in the released layer-1 forward's IEEE dots.
SPILL_BUDGET = 4096
CELLS = ("lstm", "gru")
MODES = ("train", "eval")
# How a run sets torch's float32 matmuls: torch's defaults; TF32 allowed (allow_tf32 = True, or
# set_float32_matmul_precision("high")); autocast to bfloat16 (Lightning's bf16-mixed).
SETTINGS = ("fp32", "tf32", "bf16-autocast")
# A batch that is not a multiple of 16 (eval batches of 250, 10, ...; a last partial batch) and one
# that is (the training batches of 64): two programs each.
BATCHES = (20, 32)
KERNEL_NAMES = {"layer_step_forward": "forward", "layer_step_backward": "backward"}


@dataclasses.dataclass(frozen=True)
class Launches:
    """One training step's launches (forward and backward, every layer) of ``model`` as a run makes them."""

    model: str  # a model of models(), or any of its aliases
    cell: str
    mode: str  # train (dropout on where the model has it) or eval
    setting: str  # one of SETTINGS
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.cell}-{self.mode}-{self.setting}-b{self.batch}"


# tests/test_triton_aot.py's default run (about 4 minutes on 2 idle cores; `exhaustive` compiles the
# rest): the paper presets' BRIMs training step exactly as it launches at a batch of 64, in float32
# and in bf16-mixed (TF32 dots), and each of the kernels' code paths at small sizes: GRU, eval
# (no dropout), a batch that is not a multiple of 16, TF32 with dropout, the CPU presets' padded
# sizes, every module active (TOP_K == N) and a RIMs layer.
DEFAULT_LAUNCHES = (
    Launches("released", "lstm", "train", "fp32", 32),
    Launches("released", "lstm", "train", "bf16-autocast", 32),
    Launches("small", "lstm", "train", "fp32", 20),
    Launches("small", "gru", "eval", "fp32", 20),
    Launches("small", "gru", "train", "tf32", 32),
    Launches("smnist-cpu", "lstm", "train", "bf16-autocast", 32),
    Launches("rl/cartpole/brims-all-active", "gru", "train", "fp32", 20),
    Launches("cpu/adding/rims", "lstm", "eval", "tf32", 20),
)


@functools.cache
def models() -> dict[str, Any]:
    """Every model whose kernels are compiled, by name, as an LSTM :class:`brims.BRIMsConfig` with the
    Triton backend: ``released``, ``small``, then each preset's core (named after the preset) and each
    modular model of each suite (``suite/experiment/model``), built through the experiments' own config
    loader. A model equal to an earlier one (the input size aside, which only the slot projections
    read) is left out: :func:`aliases` names them."""
    return {name: config for name, (config, _) in _models_and_aliases().items()}


def aliases(model: str) -> list[str]:
    """The presets and suite models whose core is ``model``'s (``model`` first)."""
    return _models_and_aliases()[model][1]


def canonical(name: str) -> str:
    """The key of :func:`models` whose core the model ``name`` (any alias) has."""
    found = next((model for model, (_, names) in _models_and_aliases().items() if name in names), None)
    if found is None:
        raise KeyError(f"no preset or suite model {name!r}")
    return found


@functools.cache
def _models_and_aliases() -> dict[str, tuple[Any, list[str]]]:
    from brims import BRIMsConfig
    from brims_experiments.reproduce.suites import load_suite
    from brims_experiments.suites import suite_names
    from brims_experiments.train.commands import load_any_config, preset_names, resolve_config

    small = BRIMsConfig(5, hidden_sizes=(12, 10), num_modules=(4, 2), top_k=(2, 1), input_heads=2, input_key_size=4,
                        input_value_factor=2, comm_heads=3, comm_key_size=3, comm_value_size=5, attention_dropout=0.1,
                        backend="triton")  # tests/support.py's two layers with top-down and communication
    named = [("released", BRIMsConfig(300, backend="triton")), ("small", small)]
    cores = [(preset, load_any_config(resolve_config(preset), []).model.core) for preset in preset_names()]
    for suite in suite_names():
        for experiment in load_suite(suite).experiments:
            for model, overrides in experiment.models.items():
                config = load_any_config(resolve_config(experiment.preset), [*experiment.overrides, *overrides])
                cores.append((f"{suite}/{experiment.name}/{model}", config.model.core))
    for name, core in cores:
        if core.is_modular_kind:
            config = core.brims_config(input_size=1)
            if not config.attended_norm:  # the triton backend refuses attended_norm: no fused kernels to compile
                named.append((name, config))
    found: dict[Any, tuple[str, Any, list[str]]] = {}
    for name, config in named:
        key = dataclasses.replace(config, input_size=1, backend="triton", cell="lstm")
        if key not in found:
            found[key] = (name, dataclasses.replace(config, backend="triton", cell="lstm"), [])
        found[key][2].append(name)
    return {name: (config, names) for name, config, names in found.values()}


def all_launches() -> list[Launches]:
    """Every model x cell x mode x setting x batch."""
    return [Launches(model, cell, mode, setting, batch) for model in models() for cell in CELLS for mode in MODES
            for setting in SETTINGS for batch in BATCHES]


@contextlib.contextmanager
def torch_setting(setting: str, device_type: str = "cpu"):
    """torch's float32 matmuls as a run with ``setting`` has them (restored after)."""
    import torch

    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")  # torch >= 2.9, where allow_tf32 must not be mixed with it
    before = matmul.fp32_precision if new_api else matmul.allow_tf32
    tf32 = setting == "tf32"
    if new_api:
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        matmul.allow_tf32 = tf32
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=setting == "bf16-autocast"):
            yield
    finally:
        if new_api:
            matmul.fp32_precision = before
        else:
            matmul.allow_tf32 = before


def _argument_type(value: Any) -> tuple[str, bool]:
    """An argument's Triton type and whether a launch specialises it as divisible by 16 (what Triton 3.x
    does: a pointer 16-byte aligned, an integer a multiple of 16; an integer 1 would be a constexpr,
    which no batch here is)."""
    import torch

    if isinstance(value, torch.Tensor):
        dtype = {torch.float32: "fp32", torch.float64: "fp64", torch.int8: "i8", torch.bfloat16: "bf16",
                 torch.float16: "fp16"}[value.dtype]
        return "*" + dtype, value.data_ptr() % 16 == 0
    if value == 1:
        raise ValueError("an integer argument of 1 is a constexpr in Triton's specialisation: not captured here")
    return "i32", value % 16 == 0


def capture(launches: Launches, overrides: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The launches of one step forward and backward, in order: ``[{kernel, layer, signature,
    constexprs, attrs, options}]``. The kernels are not run (their outputs stay uninitialised); the
    backward runs outside autocast, as a training loop runs it."""
    import torch

    from brims import BRIMs
    from brims.backends import fused

    config = dataclasses.replace(models()[canonical(launches.model)], cell=launches.cell)
    records: list[dict[str, Any]] = []

    def record(kernel, batch, args, constants):
        signature, attrs = {}, {}
        for index, (name, value) in enumerate(zip(kernel.arg_names, args)):
            signature[name], divisible = _argument_type(value)
            if divisible:
                attrs[(index,)] = [["tt.divisibility", 16]]
        for name in constants:
            signature[name] = "constexpr"
        options = dict(fused.LAUNCH_OPTIONS)
        options.update(overrides or {})
        records.append({"kernel": kernel.__name__, "signature": signature, "constexprs": dict(constants),
                        "attrs": [[list(k), v] for k, v in attrs.items()], "options": options})

    saved = fused._launch, fused._check_device
    fused._launch, fused._check_device = record, (lambda x: None)
    try:
        with torch.random.fork_rng():  # leaves the caller's random state as it was
            torch.manual_seed(0)
            model = BRIMs.from_config(config).train(launches.mode == "train")
            x = torch.randn(2, launches.batch, config.input_size)
            with torch_setting(launches.setting):
                output, _ = model(x)
            output.float().nan_to_num().sum().backward()
    finally:
        fused._launch, fused._check_device = saved
    # Step 1 repeats step 0's launches: keep one step (layer l forward, ..., then the backward's, last layer first).
    layers = config.num_layers
    forward = [dict(r, layer=i) for i, r in enumerate(r for r in records if r["kernel"] == "layer_step_forward")]
    backward = [dict(r, layer=layers - 1 - i) for i, r in enumerate(r for r in records
                                                                     if r["kernel"] == "layer_step_backward")]
    return forward[:layers] + backward[:layers]


@dataclasses.dataclass
class Kernel:
    """One distinct specialisation: its launch ``record`` and every launch that makes it (``uses``:
    ``(Launches, layer)``); named after its first use."""

    record: dict[str, Any]
    uses: list[tuple[Launches, int]]

    @property
    def name(self) -> str:
        launches, layer = self.uses[0]
        return f"{launches.name}-L{layer}-{KERNEL_NAMES[self.record['kernel']]}"

    @property
    def key(self) -> str:
        return specialisation(self.record)


def specialisation(record: dict[str, Any]) -> str:
    """What Triton compiles a launch for: kernel, signature, constexprs, attributes, options."""
    return json.dumps({k: record[k] for k in ("kernel", "signature", "constexprs", "attrs", "options")},
                      sort_keys=True)


_CAPTURED: dict[tuple, list[dict[str, Any]]] = {}


def kernels_of(launch_sets, overrides: dict[str, int] | None = None) -> list[Kernel]:
    """The distinct kernels the launch sets make, in order of first use (captured once per set)."""
    found: dict[str, Kernel] = {}
    for launches in launch_sets:
        cache_key = (launches, tuple(sorted((overrides or {}).items())))
        if cache_key not in _CAPTURED:
            _CAPTURED[cache_key] = capture(launches, overrides)
        for record in _CAPTURED[cache_key]:
            key = specialisation(record)
            found.setdefault(key, Kernel(record, [])).uses.append((launches, record["layer"]))
    return list(found.values())


_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_record(record: dict[str, Any], arch: int, kernels: Any) -> dict[str, Any]:
    """``triton.compile`` one captured launch for ``sm_<arch>``: shared bytes, registers, spills (bytes
    of spill stores per thread, ptxas -v), stack, seconds. Raises what compiling raises."""
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


def worker_environment(cache: str) -> dict[str, str]:
    """A compile subprocess's environment: the real compiler, not the interpreter, on one thread, with
    the Triton cache ``cache`` (a case is always compiled, never read from a cache)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(OMP_NUM_THREADS="1", TRITON_ALWAYS_COMPILE="1", CUDA_VISIBLE_DEVICES="", TRITON_CACHE_DIR=cache)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    return env


def run_case(record: dict[str, Any], arch: int, timeout: float = 600) -> dict[str, Any]:
    """One launch compiled for ``sm_<arch>`` in a fresh Python: ``{ok, ..resources}``, or ``{ok: False,
    error}`` with the subprocess's stderr (an LLVM assertion's abort, a CompilationError's traceback, a
    timeout)."""
    import importlib.util

    kernels = importlib.util.find_spec("brims.backends.triton_kernels").origin
    spec = json.dumps({"record": record, "arch": arch, "kernels": kernels})
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="brims-triton-aot-") as cache:
            done = subprocess.run([sys.executable, __file__, "--worker", "-"], check=False, input=spec,
                                  capture_output=True, text=True, env=worker_environment(cache), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "wall": timeout}
    wall = round(time.perf_counter() - start, 1)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(ok=True, wall=wall, **json.loads(line[len("RESULT "):]))
    signal = f" (signal {-done.returncode})" if done.returncode < 0 else ""
    error = (done.stderr or done.stdout).strip()
    return {"ok": False, "wall": wall, "error": f"exit status {done.returncode}{signal}:\n" + error[-4000:]}


def compile_all(kernels: list[Kernel], archs=ARCHS, jobs: int = 1,
                done: dict[tuple[int, str], dict] | None = None) -> dict[tuple[int, str], dict[str, Any]]:
    """Every kernel for every arch, ``jobs`` subprocesses at a time, largest first (so the long ones do
    not finish last): ``{(arch, kernel.key): result}``. Results already in ``done`` are not compiled again."""
    done = {} if done is None else done
    todo = [(arch, k) for k in kernels for arch in archs if (arch, k.key) not in done]
    todo.sort(key=lambda item: -item[1].record["constexprs"]["M_P"])
    with ThreadPoolExecutor(jobs) as pool:
        for (arch, kernel), result in zip(todo, pool.map(lambda item: run_case(item[1].record, item[0]), todo)):
            done[(arch, kernel.key)] = result
    return done


def problems(kernel: Kernel, arch: int, result: dict[str, Any]) -> list[str]:
    """Why ``result`` fails: a compile error, shared memory past the limit, spills past the budget."""
    if not result["ok"]:
        return [f"sm{arch}-{kernel.name} does not compile:\n{result['error']}"]
    found = []
    if result["shared"] > SHARED_LIMIT[arch]:
        found.append(f"sm{arch}-{kernel.name}: {result['shared']:,} bytes of shared memory, past sm_{arch}'s "
                     f"{SHARED_LIMIT[arch]:,} per block")
    if result["spills"] > SPILL_BUDGET:
        found.append(f"sm{arch}-{kernel.name}: {result['spills']:,} bytes of spill stores per thread at "
                     f"{result['registers']} registers, past the budget of {SPILL_BUDGET:,}")
    return found


def _cell(result: dict[str, Any] | None, arch: int) -> str:
    """``registers / shared / spills`` of one result, or why it has none."""
    if result is None:
        return "not run"
    if not result["ok"]:
        error = result["error"]
        if "SLPVectorizer" in error:
            return "**LLVM abort** (SLP vectoriser)"
        return "**failed**: " + error.strip().splitlines()[-1][:80]
    fits = "" if result["shared"] <= SHARED_LIMIT[arch] else " **over**"
    return f"{result['registers']} / {result['shared']:,}{fits} / {result['spills']:,}"


def kernel_table(kernels: list[Kernel], results: dict[tuple[int, str], dict], archs=ARCHS) -> str:
    """One row per kernel, ``registers / shared (B) / spills (B)`` per arch, and its compile seconds."""
    head = " | ".join(f"sm_{a}: registers / shared (B) / spills (B) | sm_{a}: compile (s)" for a in archs)
    lines = [f"| kernel (first use) | precision | launches | {head} |",
             "|---|---|---:|" + "---|---:|" * len(archs)]
    for k in kernels:
        cells = " | ".join(f"{_cell(results.get((a, k.key)), a)} | {results.get((a, k.key), {}).get('seconds', '')}"
                           for a in archs)
        lines.append(f"| {k.name} | {k.record['constexprs']['PRECISION']} | {len(k.uses)} | {cells} |")
    return "\n".join(lines)


TF32_ALIKE = {"tf32": ("tf32", "bf16-autocast")}  # bf16 autocast launches TF32 allowed's kernels


def released_table(kernels: list[Kernel], results: dict[tuple[int, str], dict], batch: int = 32) -> str:
    """The released model's kernels at ``batch`` side by side: IEEE float32, TF32 (also bf16 autocast), per
    arch; a row for each kernel among ``kernels`` (empty if none)."""
    by_use = {(launches.model, launches.cell, launches.mode, launches.setting, launches.batch, layer,
               KERNEL_NAMES[k.record["kernel"]]): k for k in kernels for launches, layer in k.uses}
    columns = [(arch, setting) for arch in ARCHS for setting in ("fp32", "tf32")]
    head = " | ".join(f"sm_{a} {'IEEE' if s == 'fp32' else 'TF32 / bf16 autocast'}" for a, s in columns)
    lines = [f"| cell | mode | layer | kernel | {head} |", "|---|---|---:|---|" + "---|" * len(columns)]
    for cell in CELLS:
        for mode in MODES:
            for layer in (0, 1):
                for name in KERNEL_NAMES.values():
                    found = [next((by_use[use] for use in (("released", cell, mode, s, batch, layer, name)
                                                           for s in TF32_ALIKE.get(setting, (setting,)))
                                   if use in by_use), None) for _, setting in columns]
                    if any(found):
                        cells = [_cell(results.get((arch, kernel.key)) if kernel else None, arch)
                                 for (arch, _), kernel in zip(columns, found)]
                        lines.append(f"| {cell} | {mode} | {layer} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def model_summary(kernels: list[Kernel], results: dict[tuple[int, str], dict]) -> str:
    """Per model: its distinct kernels, how many compiled, the most registers, shared memory and spills
    over its kernels and both archs, and the presets and suite models that share it."""
    lines = ["| model (also) | kernels x archs | compiled | max registers | max shared (B) | max spills (B) |",
             "|---|---:|---:|---:|---:|---:|"]
    for model in models():
        own = [(a, k) for k in kernels if any(canonical(launches.model) == model for launches, _ in k.uses)
               for a in ARCHS]
        got = [results[(a, k.key)] for a, k in own if (a, k.key) in results]
        ok = [r for r in got if r["ok"]]
        if not got:
            continue
        also = ", ".join(name for name in aliases(model) if name != model)
        lines.append(f"| {model}{f' ({also})' if also else ''} | {len(own)} | {len(ok)} | "
                     f"{max((r['registers'] for r in ok), default=0)} | {max((r['shared'] for r in ok), default=0):,} | "
                     f"{max((r['spills'] for r in ok), default=0):,} |")
    return "\n".join(lines)


DOCS_BEGIN, DOCS_END = "<!-- triton_aot.py tables: begin -->", "<!-- triton_aot.py tables: end -->"


def write_docs(path: Path, text: str, begin: str = DOCS_BEGIN, end: str = DOCS_END) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``path`` with ``text`` (the
    file replaced whole, so that a kill leaves the old one)."""
    from brims_experiments.data.store import atomic_write_text

    docs = path.read_text()
    start, stop = docs.index(begin) + len(begin), docs.index(end)
    atomic_write_text(path, docs[:start] + "\n" + text + "\n" + docs[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--all", action="store_true", help="every model's launches (default: DEFAULT_LAUNCHES)")
    parser.add_argument("--models", nargs="+", help="only these models' launches")
    parser.add_argument("--archs", nargs="+", type=int, default=list(ARCHS))
    parser.add_argument("--num-stages", type=int, help="override LAUNCH_OPTIONS' num_stages")
    parser.add_argument("--num-warps", type=int, help="override LAUNCH_OPTIONS' num_warps")
    parser.add_argument("--jobs", type=int, default=1, help="compiles at a time")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--from-json", type=Path, nargs="+", default=[],
                        help="results of earlier --json runs: only the kernels missing from them are compiled")
    parser.add_argument("--write-docs", type=Path, help="put the tables between the markers in this file")
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(sys.stdin.read() if args.worker == "-" else args.worker))
        return
    overrides = {k: v for k, v in (("num_stages", args.num_stages), ("num_warps", args.num_warps)) if v}
    launch_sets = all_launches() if args.all else list(DEFAULT_LAUNCHES)
    if args.models:
        launch_sets = [launches for launches in launch_sets if launches.model in args.models]
    kernels = kernels_of(launch_sets, overrides)  # captured here, one at a time: capture() patches the fused module
    keys = {(arch, kernel.key) for kernel in kernels for arch in args.archs}
    earlier = {(r["arch"], r["key"]): r["result"] for path in args.from_json for r in json.loads(path.read_text())}
    results = {key: result for key, result in earlier.items() if key in keys}
    missing = len(keys) - len(results)
    start = time.perf_counter()
    results = compile_all(kernels, args.archs, args.jobs, done=results)
    if missing:
        print(f"{missing} kernel compiles ({len(kernels)} kernels x {len(args.archs)} archs, less those read from "
              f"--from-json) in {time.perf_counter() - start:.0f} s at {args.jobs} a time", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([{"arch": arch, "key": key, "result": result}
                                         for (arch, key), result in results.items()], indent=1))
    text = docs_text(kernels, results, len(launch_sets))
    print(text)
    if args.write_docs:
        write_docs(args.write_docs, text)


def docs_text(kernels: list[Kernel], results: dict[tuple[int, str], dict], sets: int) -> str:
    """The tables docs/speed.md shows: the released model's kernels at each batch, per model, every kernel."""
    options = {(k.record["options"]["num_warps"], k.record["options"]["num_stages"]) for k in kernels}
    options_text = ", ".join(f"{w} warps, {s} stage{'s' if s > 1 else ''}" for w, s in sorted(options))
    compiled = [r for r in results.values() if r["ok"]]
    most_shared = max((r["shared"] for r in compiled), default=0)
    most_spills = max((r["spills"] for r in compiled), default=0)
    summary = (f"{len(kernels)} distinct kernels from {sets} launch sets, each compiled for sm_80 and sm_90 "
               f"({options_text}): {len(compiled)} of {len(results)} compiled, at most {most_shared:,} bytes of "
               f"shared memory and {most_spills:,} bytes of spill stores a thread.")
    lines = [summary]
    resources = "Registers / shared memory (bytes a block) / spill stores (bytes a thread)"
    for batch, which in ((32, "a multiple of 16 (the training batches of 64)"), (20, "not a multiple of 16")):
        table = released_table(kernels, results, batch)
        if table:
            lines += ["", f"{resources} of the released model's kernels at a batch {which}:", "", table]
    per_model = "Per model, over its kernels here (of LSTM and GRU, train and eval, each setting and batch) and both archs:"
    lines += ["", per_model, "", model_summary(kernels, results), "", "Every kernel:", "",
              kernel_table(kernels, results, ARCHS)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
