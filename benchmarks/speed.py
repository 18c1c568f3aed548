"""Speed and memory of brims.BRIMs against nn.LSTM and a dense-masked reference, in one run.

Every model sees the same input ``x = randn(T, B, 300)`` (default T=196, B=64: sequential
MNIST at 14x14 with a 300-feature input) and the same labels. Measured per model:

- training step: ``zero_grad`` + forward + linear readout of the last output (300 -> 10) +
  cross-entropy + backward (model in train mode, so BRIMs' attention dropout is on);
- forward: the same forward under ``torch.no_grad()`` with the model in **eval** mode;
- peak memory of one training step, two ways (see ``--help`` epilog and the printed notes).

BRIMs trains through autograd; ``compile_step()`` runs the same steps through ``torch.compile``'d
chunks of ``--steps-per-call`` steps (``brims.backends.compiled``); ``--triton`` adds
``BRIMs(300, backend="triton")``, each layer step one fused kernel forward and one backward
(``brims.backends.fused``; CUDA); ``--cuda-graphs`` adds the eager (and Triton) models with their
training forward and backward captured by ``torch.cuda.make_graphed_callables`` and their eval
forward by ``torch.cuda.graph``, so that a step replays graphs instead of launching kernels.

Timings are medians of ``--repeats`` runs after ``--warmup`` runs. The repeats are interleaved
across models (repeat r of every model before repeat r+1 of any), so that load drift on a
shared machine hits every model alike; the ratios are the result, absolute times are not
(docs/design.md, section 4).

    python benchmarks/speed.py                 # CPU, includes torch.compile (a few minutes)
    python benchmarks/speed.py --no-compile    # quick
    python benchmarks/speed.py --device cuda
    python benchmarks/speed.py --device cuda --no-compile --triton --cuda-graphs --batch 1024 --no-dense
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

EPILOG = """memory columns:
  peak alloc   peak of bytes allocated during one training step above what was allocated
               before it (parameters and the input are not counted; gradients, which are
               set to None before the step, are). CUDA: torch.cuda.max_memory_allocated.
               CPU: the running sum of the allocator events recorded by torch.profiler
               (profile_memory=True) in a separate, untimed step.
  saved act.   bytes of the distinct storages that autograd saves for backward during the
               forward (torch.autograd.graph.saved_tensors_hooks), excluding parameters and
               the input: the activation memory held at the end of the forward.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--threads", type=int, default=2, help="intra-op CPU threads, torch.set_num_threads (default: 2)"
    )
    parser.add_argument("--steps", type=int, default=196, help="sequence length T (default: 196)")
    parser.add_argument("--batch", type=int, default=64, help="batch size B (default: 64)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per model and mode; median reported (default: 5)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per model and mode first (default: 2)")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the BRIMs(300).compile_step() rows (compiling takes minutes)"
    )
    parser.add_argument(
        "--compile-mode", action="append", default=[], metavar="MODE",
        help="also time compile_step(mode=MODE), e.g. reduce-overhead (CUDA graphs) on CUDA; repeatable",
    )
    parser.add_argument(
        "--steps-per-call", type=int, default=4, metavar="K",
        help="time steps per compiled call, compile_step(steps_per_call=K) (default: %(default)s)",
    )
    parser.add_argument(
        "--triton", action="store_true", help="also time BRIMs(300, backend='triton'), the fused kernels (CUDA)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="also time the eager model (and with --triton the fused one) replayed as CUDA graphs (CUDA)",
    )
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-masked reference (slow at large B)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, input and labels (default: 0)")
    args = parser.parse_args()
    for name in ("threads", "steps", "batch", "repeats", "steps_per_call"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error("--cuda-graphs needs --device cuda")
    return args


ARGS = parse_args()  # before importing torch's users: the flags below must come first

import torch

# First torch call, before set_num_threads or any parallel op: flush-to-zero is a per-thread
# flag that OpenMP workers inherit only when created after it is set. Without it, gradients
# that decay into denormals through the time loop make some matmuls 10-20x slower.
FLUSH_DENORMAL = torch.set_flush_denormal(True)
torch.set_num_threads(ARGS.threads)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS.

    Otherwise every training step maps its activations afresh and page-faults them in, and the
    model timed after a memory-hungry one pays for it: on our VM nn.LSTM's median training step
    doubled when interleaved with the others. Returns False where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 2**30)) and bool(libc.mallopt(m_mmap_threshold, 32 * 2**20))


KEEP_FREED_MEMORY = keep_freed_memory()

import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import brims

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dense_reference import DenseMaskedBRIMs

INPUT_SIZE, HIDDEN, CLASSES = 300, 300, 10
MIB = 2.0**20


class Bench:
    """A recurrent model plus a readout, with the three things we measure."""

    def __init__(self, name: str, model: nn.Module, device: torch.device) -> None:
        self.name = name
        self.model = model.to(device)
        self.head = nn.Linear(HIDDEN, CLASSES).to(device)
        self.params = sum(p.numel() for p in model.parameters())
        self.train_times: list[float] = []
        self.forward_times: list[float] = []
        self.first_calls: list[float] = []  # warm-up times (compilation shows here)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.head.zero_grad(set_to_none=True)

    def train_step(self, x: Tensor, y: Tensor) -> None:
        self.model.train()
        self.zero_grad()
        output, _ = self.model(x)  # (T, B, 300)
        loss = F.cross_entropy(self.head(output[-1]), y)
        loss.backward()

    def forward(self, x: Tensor) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(x)
        self.model.train()


class TopOutput(nn.Module):
    """The model's output alone: ``make_graphed_callables`` captures modules that return tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[0]


class GraphedBench(Bench):
    """A model whose training forward and backward replay CUDA graphs (``make_graphed_callables``),
    and whose eval forward replays one graph (``torch.cuda.graph``) captured on a static input."""

    def __init__(self, name: str, model: nn.Module, device: torch.device, x: Tensor) -> None:
        super().__init__(name, model, device)
        self.graphed = torch.cuda.make_graphed_callables(TopOutput(self.model).train(), (x,))
        self.model.eval()
        self.static_x = x.clone()
        with torch.no_grad():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
                for _ in range(2):
                    self.model(self.static_x)
            torch.cuda.current_stream(device).wait_stream(side)
            self.eval_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.eval_graph):
                self.static_output = self.model(self.static_x)[0]
        self.model.train()

    def train_step(self, x: Tensor, y: Tensor) -> None:
        self.zero_grad()
        output = self.graphed(x)
        F.cross_entropy(self.head(output[-1]), y).backward()

    def forward(self, x: Tensor) -> None:
        self.static_x.copy_(x)
        self.eval_graph.replay()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_alloc(bench: Bench, x: Tensor, y: Tensor, device: torch.device) -> float:
    """Peak bytes allocated during one training step, above the level before it."""
    bench.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        bench.train_step(x, y)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        bench.train_step(x, y)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def saved_activations(bench: Bench, x: Tensor, y: Tensor) -> float:
    """Bytes of distinct storages saved for backward in one training step (no params, no input)."""
    excluded = {p.untyped_storage().data_ptr() for p in (*bench.model.parameters(), *bench.head.parameters())}
    excluded |= {x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded and storage.nbytes() > 0:
            seen[storage.data_ptr()] = storage.nbytes()  # saved tensors live until backward: no reuse
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        bench.train_step(x, y)
    return float(sum(seen.values()))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main() -> None:
    args = ARGS
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but torch.cuda.is_available() is False")

    print(f"torch {torch.__version__}, python {platform.python_version()}, device {device}: {device_name(device)}")
    print(
        f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"flush denormal {'on' if FLUSH_DENORMAL else 'UNSUPPORTED on this CPU'}, "
        f"freed memory kept (glibc mallopt) {'yes' if KEEP_FREED_MEMORY else 'no'}, "
        f"T={args.steps} B={args.batch} F={INPUT_SIZE}, warmup {args.warmup}, median of {args.repeats}, "
        f"compiled BRIMs steps per call {args.steps_per_call}"
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"CPU cores available {cores}, load average (1 min) before start {load:.1f}")
    if device.type == "cpu" and load + args.threads > cores + 0.5:
        print(
            "WARNING: other processes are using these cores. With as many OpenMP threads as free cores or more,"
            " every parallel op waits for a descheduled thread, which slows models made of many small ops"
            " (BRIMs, the dense reference) far more than nn.LSTM: ratios are unreliable. Use a quiet machine"
            " or fewer --threads."
        )
    print()

    torch.manual_seed(args.seed)
    x = torch.randn(args.steps, args.batch, INPUT_SIZE, device=device)
    y = torch.randint(0, CLASSES, (args.batch,), device=device)

    benches = [Bench("nn.LSTM(300, 300, num_layers=2)", nn.LSTM(INPUT_SIZE, HIDDEN, num_layers=2), device)]
    torch.manual_seed(args.seed)

    eager = brims.BRIMs(INPUT_SIZE)
    benches.append(Bench("brims.BRIMs(300), eager", eager, device))

    def same_weights(backend: str = "torch") -> brims.BRIMs:
        model = brims.BRIMs(INPUT_SIZE, backend=backend)
        model.load_state_dict(eager.state_dict())
        return model

    if not args.no_compile:
        compiled = same_weights().compile_step(steps_per_call=args.steps_per_call)
        benches.append(Bench("brims.BRIMs(300).compile_step()", compiled, device))
    for mode in args.compile_mode:
        moded = same_weights().compile_step(steps_per_call=args.steps_per_call, mode=mode)
        benches.append(Bench(f"brims.BRIMs(300).compile_step(mode={mode!r})", moded, device))
    if args.triton:
        benches.append(Bench("brims.BRIMs(300, backend='triton')", same_weights("triton"), device))
    if args.cuda_graphs:
        benches.append(GraphedBench("brims.BRIMs(300), eager, CUDA graphs", same_weights(), device, x))
        if args.triton:
            benches.append(GraphedBench("brims.BRIMs(300, backend='triton'), CUDA graphs", same_weights("triton"),
                                        device, x))
    if not args.no_dense:
        torch.manual_seed(args.seed)
        benches.append(Bench("dense-masked reference (released design)", DenseMaskedBRIMs(INPUT_SIZE), device))

    for bench in list(benches):
        start = time.perf_counter()
        try:
            for _ in range(args.warmup):
                bench.first_calls.append(timed(lambda bench=bench: bench.train_step(x, y), device))
            for _ in range(args.warmup):
                bench.first_calls.append(timed(lambda bench=bench: bench.forward(x), device))
        except Exception as error:  # an optional compile mode this torch or device cannot run
            if bench is benches[0] or bench.name.startswith("dense"):
                raise
            print(f"DROPPED {bench.name}: {type(error).__name__}: {str(error)[:300]}", flush=True)
            benches.remove(bench)
            continue
        print(f"warmed up {bench.name} in {time.perf_counter() - start:.1f} s", flush=True)

    graphs_before = compiled_graphs()
    for repeat in range(args.repeats):
        for bench in benches:
            bench.train_times.append(timed(lambda bench=bench: bench.train_step(x, y), device))
        for bench in benches:
            bench.forward_times.append(timed(lambda bench=bench: bench.forward(x), device))
        print(f"timed repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
    recompiled = compiled_graphs() - graphs_before

    memory = {bench.name: (peak_alloc(bench, x, y, device), saved_activations(bench, x, y)) for bench in benches}

    def median(values: list[float]) -> float:
        return statistics.median(values)

    lstm = benches[0]
    lstm_train, lstm_forward = median(lstm.train_times), median(lstm.forward_times)
    print()
    print(
        "| model | params | train step (ms) | × nn.LSTM | forward, eval (ms) | × nn.LSTM "
        "| peak alloc train (MiB) | saved act. (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for bench in benches:
        train, forward = median(bench.train_times), median(bench.forward_times)
        peak, saved = memory[bench.name]
        print(
            f"| {bench.name} | {bench.params / 1e6:.2f} M | {train * 1e3:.0f} | {train / lstm_train:.1f} "
            f"| {forward * 1e3:.0f} | {forward / lstm_forward:.1f} | {peak / MIB:.0f} | {saved / MIB:.0f} |"
        )

    print()
    dense = benches[-1]
    dense_train, dense_forward = median(dense.train_times), median(dense.forward_times)
    for bench in benches[1:-1] if not args.no_dense else []:
        print(
            f"speed-up of {bench.name} over the dense-masked reference: "
            f"train {dense_train / median(bench.train_times):.1f}x, "
            f"forward {dense_forward / median(bench.forward_times):.1f}x"
        )
    print()
    for bench in benches:
        spread = max(bench.train_times) / min(bench.train_times)
        warm = ", ".join(f"{t:.1f}" for t in bench.first_calls)
        print(
            f"{bench.name}: warm-up calls (train x{args.warmup}, forward x{args.warmup}) {warm} s; "
            f"timed train max/min {spread:.2f}"
        )
    if hasattr(os, "getloadavg"):
        print(f"load average (1 min) at the end {os.getloadavg()[0]:.1f} on {cores} cores")
    if recompiled:
        print(f"WARNING: {recompiled} graph(s) compiled during the timed runs; compiled timings include it")
    print()
    print("train step = zero_grad + forward + readout(last step) + cross-entropy + backward, train mode.")
    print("forward = torch.no_grad(), eval mode (no attention dropout).")
    source = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events"
    print(f"peak alloc: {source} above the pre-step level; saved act.: distinct storages saved for backward (--help).")


if __name__ == "__main__":
    main()
