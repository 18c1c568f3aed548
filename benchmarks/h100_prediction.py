"""Predict the Triton backend's training step on an H100 SXM from FLOPs and bytes, without a GPU.

A prediction for a GPU session to confirm or refute (docs/speed.md), of the step benchmarks/speed.py
times: the released model (input 300, hidden 300/300, modules 6/3), T=196 (sequential MNIST at
14x14), forward, a 300 -> 10 readout of the last step, cross-entropy and backward, in training mode.

Every launch of the step is counted on the CPU: the fused kernels' launches are captured as
benchmarks/triton_aot.py captures them (recorded, not run), and the torch operations around them
(the slot projections' ``nn.Linear`` forward and backward, the dropout masks, the weight gradients'
batched matmuls, autograd's gradient accumulation, copies) are profiled by ``torch.profiler`` with
their shapes and dtypes. Each launch gets a roofline time ``max(FLOPs / compute peak, bytes / HBM
bandwidth, launch floor)`` and the step is their sum:

- the fused kernels' FLOPs and bytes are counted from their shapes (:func:`fused_cost`): the dots as
  the kernels compute them (rows padded to 16 a program, sizes to their padded tiles), the
  element-wise work, and every tensor a launch reads or writes once (weights, states, slots, masks,
  saved activations, gradients); re-reads of a launch's own scratch (L1/L2) are not HBM traffic;
- a torch matmul (``mm``, ``addmm``, ``bmm``) counts ``2 m k n`` FLOPs at the peak of its dtype and
  of torch's TF32 setting, other operations one FLOP an element; bytes are its inputs and output;
- each per-step cost is the difference between a 4-step and a 2-step sequence, halved (so the
  readout and loss count once), and T=196 steps are the fixed part plus 196 of them.

Two views of the fused kernels: **whole GPU** (the peaks below), and **on its SMs**: a program (16
batch rows) runs on one SM, so a launch of ``P`` programs computes at most at ``min(P, 132) / 132``
of the compute peaks (4 of 132 SMs at a batch of 64); its bytes still count at the whole HBM
bandwidth (optimistic: each program also reads all the layer's weights from L2, the column
"weights a program reads"). Neither sees the kernels' latency inside a program (loops over modules
and heads, barriers between passes): both are lower bounds.

Peaks (NVIDIA H100 SXM5 datasheet, dense): FP32 67 TFLOP/s (no tensor cores), TF32 495 TFLOP/s,
BF16 990 TFLOP/s, HBM3 3.35 TB/s, 132 SMs; a launch floor of 3 us and of 5 us per kernel.

    python benchmarks/h100_prediction.py                          # the tables in docs/speed.md
    python benchmarks/h100_prediction.py --write-docs docs/speed.md   # ... written between its markers
    python benchmarks/h100_prediction.py --batches 64 --steps 196
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any

FP32_FLOPS = 67e12  # FP32, CUDA cores
TF32_FLOPS = 495e12  # TF32 tensor cores, dense
BF16_FLOPS = 990e12  # BF16 tensor cores, dense
HBM_BYTES = 3.35e12  # HBM3, bytes a second
SMS = 132
LAUNCH_FLOORS = (3e-6, 5e-6)
BLOCK_B = 16
MATMULS = {"aten::mm": "mm", "aten::addmm": "mm", "aten::bmm": "bmm"}
# Operations that launch a kernel on CUDA; one nested in another (a copy_ inside to/clone) counts once.
KERNEL_OPS = {*MATMULS, "aten::add_", "aten::add", "aten::sum", "aten::copy_", "aten::bernoulli_", "aten::div_",
              "aten::mul", "aten::mul_", "aten::zero_", "aten::fill_", "aten::stack", "aten::cat", "aten::where",
              "aten::nan_to_num", "aten::_log_softmax", "aten::nll_loss_forward", "aten::_log_softmax_backward_data",
              "aten::nll_loss_backward", "aten::sub", "aten::ne", "aten::lt", "aten::clone", "aten::tanh",
              "aten::sigmoid"}
ITEMSIZE = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "signed char": 1, "bool": 1, "long int": 8,
            "int": 4}


def _load_triton_aot():
    spec = importlib.util.spec_from_file_location("triton_aot", Path(__file__).with_name("triton_aot.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["triton_aot"] = module
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Cost:
    """One launch or a sum of launches: FLOPs at each peak, bytes, launches."""

    fp32: float = 0.0  # FLOPs on CUDA cores
    tf32: float = 0.0  # FLOPs on TF32 tensor cores
    bf16: float = 0.0  # FLOPs on BF16 tensor cores
    bytes: float = 0.0
    launches: int = 0
    fraction: float = 1.0  # of the GPU's compute the launch can use (programs / SMs for the fused kernels)
    weights_per_program: float = 0.0  # bytes of weights each program reads (fused kernels)

    def compute(self, per_sm: bool = False) -> float:
        """Seconds of compute at the peaks (``per_sm``: at ``fraction`` of them)."""
        seconds = self.fp32 / FP32_FLOPS + self.tf32 / TF32_FLOPS + self.bf16 / BF16_FLOPS
        return seconds / self.fraction if per_sm else seconds

    def seconds(self, floor: float, per_sm: bool = False) -> float:
        """The roofline of one launch: max(compute, HBM, floor)."""
        return max(self.compute(per_sm), self.bytes / HBM_BYTES, floor)


def fused_cost(record: dict[str, Any], batch: int) -> Cost:
    """FLOPs and bytes of one fused kernel launch from its constexprs and the batch (module docstring).

    Dimension legend as in brims/backends/fused.py: B batch, N modules, M units, H/D/V and H2/D2/V2 the
    two attentions' heads/key/value sizes, S slots, g gates (4 LSTM, 3 GRU); ``*_P`` padded."""
    c = record["constexprs"]
    n, m, m_p, h, d, d_p, v, v_p, s = (c[k] for k in ("N", "M", "M_P", "H", "D", "D_P", "V", "V_P", "S"))
    h2, d2, d2_p, v2, v2_p = (c[k] for k in ("H2", "D2", "D2_P", "V2", "V2_P"))
    gru, comm, forward = c["IS_GRU"], c["HAS_COMM"], record["kernel"] == "layer_step_forward"
    g = 3 if gru else 4
    programs = -(-batch // BLOCK_B)
    rows = programs * BLOCK_B  # the dots compute every row of a program, masked or not
    qkv_p = 2 * d2_p + v2_p
    # Dots a row and a module computes (2 FLOPs a multiply-add), padded as the kernels tile them.
    if forward:
        dots = 2 * (h * m_p * d_p + h * g * v_p * m_p + g * m_p * m_p)  # W_q, W_ih, W_hh
        if comm:
            dots += 2 * (h2 * m_p * qkv_p + 2 * h2 * v2_p * m_p)  # q/k/v of what it reads, the output map [u | g]
        other = 4 * h * s * (d_p + v_p) + 10 * g * m_p + 2 * n  # slot logits and values, gates, competition
        other += (4 * h2 * n * d2_p + 2 * h2 * n * v2_p + 10 * m_p) if comm else 0  # logits twice, the read, update
    else:
        dots = 2 * (g * m_p * m_p + h * g * m_p * v_p + h * d_p * m_p)  # dh by W_hh, d_attended, dh by W_q
        if comm:
            dots += 2 * (2 * h2 * v2_p * m_p + 2 * h2 * m_p * v2_p + h2 * qkv_p * m_p)  # u/g again, d_read, d_proposal
        other = 4 * h * s * (d_p + v_p) * 2 + 20 * g * m_p
        other += (2 * h2 * n * (4 * d2_p + 4 * v2_p)) if comm else 0  # the attention among modules, both loops
    precision = c["PRECISION"]
    flops = rows * n * dots
    cost = Cost(fp32=rows * n * other + (flops if precision == "ieee" else 0),
                tf32=flops if precision == "tf32" else 0, launches=1, fraction=min(programs, SMS) / SMS)
    # Bytes: every tensor the launch reads or writes, once (fp32, 4 bytes; `active` 1 byte).
    big_g, slot, qkv = g * m, h * d + h * v, h2 * (2 * d2 + v2)
    weights = n * (m * h * d + h * v * big_g + m * big_g + big_g + (m if gru else 0))
    weights += n * (m * qkv + h2 * v2 * 2 * m + 2 * m) if comm else 0
    cost.weights_per_program = 4 * weights
    state = batch * n * m * (1 if gru else 2)  # h, and c for the LSTM
    masks = (n * batch * h * s if c["DROP_IN"] else 0) + (n * n * batch * h2 if c["DROP_COMM"] else 0)
    saved = n * batch * (h * d + h * v + big_g * (2 if gru else 1) + (qkv + h2 + h2 * v2 if comm else 0))
    if forward:
        elements = weights + state + batch * s * slot + masks  # read
        elements += state + batch * n * (1 + s) + saved + n * batch * (m + 1)  # written: state, attention, saved
        cost.bytes = 4 * elements + batch * n  # `active`, int8
    else:
        elements = weights + state + batch * s * slot + masks + saved + state  # read: inputs, saved, the gradients
        elements += state + batch * s * slot  # written: dh (dc), dslots
        elements += n * batch * (h * d + big_g * (2 if gru else 1) + (qkv + 2 * m + h2 * v2 + h2 if comm else 0))
        elements += n * batch * (h * v + 2 * h * s)  # scratch written: d_attended, d_logit, kept weights
        cost.bytes = 4 * elements + batch * n
    return cost


def torch_op_cost(event: Any, tf32: bool) -> Cost | None:
    """A profiled torch operation's cost, or None if it launches no kernel."""
    shapes, dtypes = event.input_shapes, event.input_dtypes
    tensors = [(shape, ITEMSIZE.get(dtype, 4)) for shape, dtype in zip(shapes, dtypes) if shape]

    def size(shape):
        count = 1
        for dim in shape:
            count *= dim
        return count

    read = sum(size(shape) * item for shape, item in tensors)
    kind = MATMULS.get(event.name)
    if kind is not None:
        (a, item), (b, _) = tensors[-2], tensors[-1]  # addmm: (bias, a, b)
        batch = a[0] if kind == "bmm" else 1
        rows, inner, cols = a[-2], a[-1], b[-1]
        flops = 2 * batch * rows * inner * cols
        out = batch * rows * cols * item
        peak = "bf16" if item == 2 else ("tf32" if tf32 else "fp32")
        return Cost(**{peak: flops}, bytes=read + out, launches=1)
    largest = max((size(shape) * item for shape, item in tensors), default=0)
    written = sum(size(shape) * item for shape, item in tensors) if event.name in ("aten::stack", "aten::cat") else largest
    elements = max((size(shape) for shape, _ in tensors), default=0)
    return Cost(fp32=elements, bytes=read + written, launches=1)


@contextlib.contextmanager
def _kernels_recorded(fused_module, launched: list):
    """The fused kernels' launches recorded (kernel, batch, constants), not run."""
    saved = fused_module._launch, fused_module._check_device

    def record(kernel, batch, args, constants):
        launched.append({"kernel": kernel.__name__, "constexprs": dict(constants), "batch": batch})

    fused_module._launch, fused_module._check_device = record, (lambda x: None)
    try:
        yield
    finally:
        fused_module._launch, fused_module._check_device = saved


def step_costs(batch: int, steps: int, setting: str, aot) -> tuple[list[Cost], list[Cost]]:
    """The fused kernels' and the torch operations' costs of one training step of ``steps`` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from brims import BRIMs, BRIMsConfig
    from brims.backends import fused

    torch.manual_seed(0)
    model = BRIMs.from_config(BRIMsConfig(300, backend="triton")).train()
    readout = torch.nn.Linear(300, 10)
    x = torch.randn(steps, batch, 300)
    labels = torch.randint(0, 10, (batch,))
    launched: list[dict[str, Any]] = []
    with _kernels_recorded(fused, launched), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with aot.torch_setting(setting):
            output, _ = model(x)
            loss = torch.nn.functional.cross_entropy(readout(output[-1]).float().nan_to_num(), labels)
        loss.backward()
    tf32 = setting == "tf32"
    ops = []
    for event in prof.events():
        if event.name not in KERNEL_OPS:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in KERNEL_OPS:
            parent = parent.cpu_parent
        if parent is None:
            ops.append(torch_op_cost(event, tf32))
    return [fused_cost(r, r["batch"]) for r in launched], ops


def total(costs: list[Cost], floor: float, per_sm: bool = False) -> float:
    return sum(cost.seconds(floor, per_sm) for cost in costs)


def prediction(batch: int, steps: int, setting: str, aot) -> dict[str, Any]:
    """Launch counts, FLOPs and predicted seconds of a training step of ``steps`` steps, from a
    2-step and a 4-step sequence (the fixed part once, the per-step part ``steps`` times)."""
    parts = {}
    for short in (2, 4):
        kernels, ops = step_costs(batch, short, setting, aot)
        parts[short] = {"kernels": kernels, "ops": ops}

    def scaled(measure):
        two, four = measure(parts[2]), measure(parts[4])
        per_step = (four - two) / 2
        return two - 2 * per_step + steps * per_step

    result = {"batch": batch, "setting": setting, "steps": steps,
              "kernel launches": scaled(lambda p: len(p["kernels"])),
              "torch launches": scaled(lambda p: len(p["ops"])),
              "kernel GFLOP": scaled(lambda p: sum(c.fp32 + c.tf32 + c.bf16 for c in p["kernels"])) / 1e9,
              "torch GFLOP": scaled(lambda p: sum(c.fp32 + c.tf32 + c.bf16 for c in p["ops"])) / 1e9,
              "kernel MB": scaled(lambda p: sum(c.bytes for c in p["kernels"])) / 1e6,
              "torch MB": scaled(lambda p: sum(c.bytes for c in p["ops"])) / 1e6}
    for floor in LAUNCH_FLOORS:
        us = round(floor * 1e6)
        result[f"kernels {us}us"] = scaled(lambda p, f=floor: total(p["kernels"], f))
        result[f"kernels on its SMs {us}us"] = scaled(lambda p, f=floor: total(p["kernels"], f, per_sm=True))
        result[f"torch {us}us"] = scaled(lambda p, f=floor: total(p["ops"], f))
    return result


def kernel_rows(batch: int, setting: str, aot) -> list[str]:
    """Per fused kernel of one time step: FLOPs, bytes, and its roofline terms."""
    kernels, _ = step_costs(batch, 1, setting, aot)
    names = ["forward L0", "forward L1", "backward L1", "backward L0"]
    rows = []
    for name, cost in zip(names, kernels):
        flops = cost.fp32 + cost.tf32 + cost.bf16
        rows.append(f"| {batch} | {_setting_name(setting)} | {name} | {flops / 1e6:,.0f} | {cost.bytes / 1e6:.1f} | "
                    f"{cost.weights_per_program / 1e6:.1f} | {cost.compute() * 1e6:.1f} | "
                    f"{cost.bytes / HBM_BYTES * 1e6:.1f} | {round(cost.fraction * SMS)} | "
                    f"{cost.compute(per_sm=True) * 1e6:.1f} |")
    return rows


def _setting_name(setting: str) -> str:
    return {"fp32": "float32 (IEEE dots)", "tf32": "TF32 allowed", "bf16-autocast": "bf16 autocast (TF32 dots)"}[setting]


DOCS_BEGIN, DOCS_END = "<!-- h100_prediction.py tables: begin -->", "<!-- h100_prediction.py tables: end -->"


def tables(batches: list[int], steps: int, settings: list[str], aot) -> str:
    lines = ["Per fused kernel launch (one layer, one time step):", "",
             ("| batch | setting | kernel | MFLOP | HBM (MB) | weights a program reads (MB) | compute, whole GPU (us) "
             "| HBM (us) | SMs used | compute on its SMs (us) |"),
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        for setting in settings:
            lines += kernel_rows(batch, setting, aot)
    lines += ["", f"A training step, T={steps} (milliseconds; a launch floor of 3 us / 5 us):", "",
              ("| batch | setting | launches: fused + torch | GFLOP: fused + torch | fused kernels, whole GPU | "
              "fused kernels on their SMs | torch operations | **step, whole GPU** | **step, fused on their SMs** |"),
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        for setting in settings:
            r = prediction(batch, steps, setting, aot)

            def ms(key, r=r):
                return f"{r[key + ' 3us'] * 1e3:.1f} / {r[key + ' 5us'] * 1e3:.1f}"

            whole = [r[f"kernels {f}us"] + r[f"torch {f}us"] for f in (3, 5)]
            on_sms = [r[f"kernels on its SMs {f}us"] + r[f"torch {f}us"] for f in (3, 5)]
            lines.append(f"| {batch} | {_setting_name(setting)} | {r['kernel launches']:,.0f} + "
                         f"{r['torch launches']:,.0f} | {r['kernel GFLOP']:.1f} + {r['torch GFLOP']:.1f} | "
                         f"{ms('kernels')} | {ms('kernels on its SMs')} | {ms('torch')} | "
                         f"**{whole[0] * 1e3:.0f} / {whole[1] * 1e3:.0f}** | "
                         f"**{on_sms[0] * 1e3:.0f} / {on_sms[1] * 1e3:.0f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 1024])
    parser.add_argument("--steps", type=int, default=196)
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16-autocast"], help="of triton_aot.SETTINGS")
    parser.add_argument("--write-docs", type=Path, help="put the tables between the markers in this file")
    args = parser.parse_args()
    aot = _load_triton_aot()
    text = tables(args.batches, args.steps, args.settings, aot)
    print(text)
    if args.write_docs:
        aot.write_docs(args.write_docs, text, DOCS_BEGIN, DOCS_END)


if __name__ == "__main__":
    main()
