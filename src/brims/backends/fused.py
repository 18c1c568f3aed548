"""The Triton backend: each layer step is one fused kernel forward and one backward (``BRIMsConfig(backend="triton")``).

Opt-in, for GPUs, where the torch backend's step is a few hundred tiny kernels per time step and
launch latency sets its speed. :func:`fused_step` computes what :meth:`brims.layer.BRIMsLayer.forward`
computes after the slot projections (tested equal, outputs and every gradient, over the model's
switches): input attention, competition, the cells, communication and write-back are
:func:`brims.backends.triton_kernels.layer_step_forward`, and its gradient ``layer_step_backward``
plus one batched matmul per weight.

The interface is tensors only: :class:`StepSizes` (the kernels' constants, from a
:class:`~brims.config.BRIMsConfig` and a layer index), :class:`StepWeights` (the layer's weight
tensors), the state, the slot projections and the dropout keep masks. The layer that calls it,
:class:`brims.backends.fused_layer.FusedBRIMsLayer`, computes the slots with ``nn.Linear`` (autograd
differentiates them) and draws the keep masks in the torch backend's order.

Precision. The step computes in its state's dtype, float32 or float64 (a bfloat16 or float16 state
is refused: keep the model in float32 and use autocast). The kernels' matmuls (``tl.dot``) use
tensor cores where torch would for the same matmuls, chosen once per layer step by
:func:`dot_precision` and kept for its backward: float32 dots are TF32 when torch runs float32 CUDA
matmuls in TF32 (``torch.backends.cuda.matmul.allow_tf32 = True``, its newer spelling
``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or ``torch.set_float32_matmul_precision("high")``),
and under autocast to bfloat16 or float16, where torch would run these matmuls in that 16-bit dtype:
the step then runs in float32 (the layer casts the slots to the state's float32, the weights stay
float32) with TF32 dots, no less precise than the torch backend's 16-bit matmuls. Otherwise, and
always in float64, they are IEEE (FMAs, exact to the dtype's rounding): with torch's defaults the
float32 step agrees with the torch backend to float32 rounding.

On a CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
imported): slow, and there for the tests (it ignores the dots' precision). Note (departure from the
torch backend): the returned attention diagnostics carry no gradient.

Dimension legend: B = batch, N = modules, M = units per module, S = non-null slots,
H / D / V and H2 / D2 / V2 = heads / key / value sizes of the input attention and of communication,
G = gates per module (4M LSTM, 3M GRU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from brims.config import BRIMsConfig

BLOCK_B = 16  # batch rows per program; tl.dot needs at least 16


def _kernels() -> Any:
    try:
        from brims.backends import triton_kernels
    except ImportError as error:  # the optional dependency
        raise ImportError("backend='triton' needs the triton package: pip install 'brims[triton]'") from error
    return triton_kernels


def _padded(size: int) -> int:
    """The power of two at least ``size`` and at least 16 (``tl.dot``'s smallest side)."""
    return max(16, 1 << (size - 1).bit_length())


@dataclass(frozen=True)
class StepSizes:
    """The constants a layer's kernels are specialised on."""

    N: int
    TOP_K: int
    M: int
    H: int
    D: int
    V: int
    S: int
    H2: int
    D2: int
    V2: int
    IS_GRU: bool
    HAS_COMM: bool

    @classmethod
    def of(cls, config: BRIMsConfig, index: int) -> StepSizes:
        """The sizes of layer ``index`` of the network ``config`` describes."""
        module_size = config.module_size(index)
        reads_top_down = config.top_down and index < config.num_layers - 1
        comm = config.communication
        return cls(
            N=config.num_modules[index],
            TOP_K=config.top_k[index],
            M=module_size,
            H=config.input_heads,
            D=config.input_key_size,
            V=config.input_value_factor * module_size // config.input_heads,
            S=2 if reads_top_down else 1,
            H2=config.comm_heads if comm else 1,
            D2=config.comm_key_size if comm else 1,
            V2=config.comm_value_size if comm else 1,
            IS_GRU=config.cell == "gru",
            HAS_COMM=comm,
        )

    def constants(self, drop_in: bool, drop_comm: bool, precision: str) -> dict[str, Any]:
        """The kernels' constexprs: these sizes padded, the dropout switches and the dots' ``precision``."""
        return dict(
            **{name: getattr(self, name) for name in ("N", "TOP_K", "M", "H", "D", "V", "S", "H2", "D2", "V2")},
            M_P=_padded(self.M), D_P=_padded(self.D), V_P=_padded(self.V), D2_P=_padded(self.D2), V2_P=_padded(self.V2),
            IS_GRU=self.IS_GRU, HAS_COMM=self.HAS_COMM, DROP_IN=drop_in, DROP_COMM=drop_comm,
            BLOCK_B=BLOCK_B, PRECISION=precision,
        )

    @property
    def gates(self) -> int:
        return (3 if self.IS_GRU else 4) * self.M

    @property
    def qkv(self) -> int:
        return self.H2 * (2 * self.D2 + self.V2)


COMPUTE_DTYPES = (torch.float32, torch.float64)


def torch_uses_tf32() -> bool:
    """Whether torch runs float32 CUDA matmuls in TF32 (``torch.backends.cuda.matmul``'s setting)."""
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 spells it fp32_precision; there, reading allow_tf32 raises once the new spelling was set.
    precision = getattr(matmul, "fp32_precision", None)
    return precision == "tf32" if precision is not None else bool(matmul.allow_tf32)


def dot_precision(h: Tensor) -> str:
    """The kernels' ``tl.dot`` input precision for a step whose state is ``h`` (module docstring):
    ``"tf32"`` for a float32 state when torch allows TF32 or autocast is on for ``h``'s device,
    else ``"ieee"``."""
    if h.dtype != torch.float32:
        return "ieee"
    return "tf32" if torch_uses_tf32() or torch.is_autocast_enabled(h.device.type) else "ieee"


def _check_dtype(h: Tensor) -> None:
    if h.dtype not in COMPUTE_DTYPES:
        raise TypeError(
            f"backend='triton' computes in float32 or float64, got a {h.dtype} state: keep the model in float32 "
            "and use torch.autocast for mixed precision (the step then runs in float32 with TF32 matmuls)"
        )


def _check_device(x: Tensor) -> None:
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"backend='triton' got tensors on {x.device.type}: its kernels need a CUDA GPU, or Triton's interpreter "
            "(set TRITON_INTERPRET=1 before Python imports triton; slow, for tests)"
        )


def _step_inputs(h: Tensor, *tensors: Tensor | None) -> list[Tensor]:
    """The kernels' leading arguments, ``h, c, slots, keep masks, weights``: what a specialisation
    does not read (GRU's ``c``, no dropout, no communication) is None, passed as ``h``'s pointer."""
    return [h, *(t if t is not None else h for t in tensors)]


def _grid(batch: int) -> tuple[int]:
    return ((batch + BLOCK_B - 1) // BLOCK_B,)


# ``num_warps`` and ``num_stages`` of every launch (benchmarks/triton_aot.py and
# tests/test_triton_aot.py compile with the same, for sm_80 and sm_90, and check what they get).
# One stage: the kernels' loops are over modules and heads, not software-pipelined matmul loops,
# and Triton's default of 3 stages multiplied their shared memory past the per-block limit (up to
# 664 KB at the released sizes). Four warps: eight made LLVM abort on sm_90 before the kernels'
# dots were chunked; they compile now, untimed (docs/speed.md).
LAUNCH_OPTIONS: dict[str, int] = {"num_warps": 4, "num_stages": 1}


def _launch(kernel: Any, batch: int, args: list[Any], constants: dict[str, Any]) -> None:
    """``kernel`` over the batch's programs: every launch of this backend goes through here."""
    kernel[_grid(batch)](*args, **constants, **LAUNCH_OPTIONS)


class StepWeights(NamedTuple):
    """A layer's weights as the kernels read them, per module ``(N, in, out)``; None where the layer has none."""

    query: Tensor  # (N, M, H*D): input attention's W^Q
    weight_ih: Tensor  # (N, H*V, G)
    weight_hh: Tensor  # (N, M, G)
    bias: Tensor  # (N, G): LSTM's one bias per gate; GRU's input-side b_r, b_z, b_in
    bias_hn: Tensor | None  # (N, M): GRU's b_hn (inside the reset product); None for LSTM
    comm_qkv: Tensor | None  # (N, M, H2*(2*D2 + V2)); None without communication
    comm_out: Tensor | None  # (N, H2*V2, 2M)
    comm_out_bias: Tensor | None  # (N, 2M)


class FusedLayerStep(torch.autograd.Function):
    """``(h, c, slots, keep masks, weights) -> (h', c', active, attention)`` for one layer step."""

    @staticmethod
    def forward(ctx, sizes: StepSizes, precision: str, h, c, slots, keep_in, keep_comm, wq, wih, whh, bias, bias_hn,
                wqkv, wout, bout):
        kernels = _kernels()
        _check_device(h)
        batch, n, m = h.shape[0], sizes.N, sizes.M
        new = h.new_empty
        h_out = new(batch, n * m)
        c_out = new(batch, n * m) if not sizes.IS_GRU else new(0)
        active = torch.empty(batch, n, dtype=torch.int8, device=h.device)
        attention = new(batch, n, 1 + sizes.S)
        query = new(n, batch, sizes.H * sizes.D)
        attended = new(n, batch, sizes.H * sizes.V)
        gates = new(n, batch, sizes.gates)
        hidden_gates = new(n, batch, sizes.gates) if sizes.IS_GRU else gates
        h_proposed = new(n, batch, m)
        null = new(n, batch)
        qkv = new(n, batch, sizes.qkv) if sizes.HAS_COMM else null
        lse = new(n, batch, sizes.H2) if sizes.HAS_COMM else null
        read = new(n, batch, sizes.H2 * sizes.V2) if sizes.HAS_COMM else null
        _launch(kernels.layer_step_forward, batch, [
            *_step_inputs(h, c, slots, wq, wih, whh, bias, bias_hn, wqkv, wout, bout, keep_in, keep_comm),
            h_out, c_out if not sizes.IS_GRU else h, active, attention,
            query, attended, gates, hidden_gates, h_proposed, null, qkv, lse, read, batch,
        ], sizes.constants(keep_in is not None, keep_comm is not None, precision))
        ctx.sizes, ctx.precision = sizes, precision  # the backward's dots as the forward's (autocast may be off by then)
        ctx.save_for_backward(h, c, slots, keep_in, keep_comm, wq, wih, whh, bias, bias_hn, wqkv, wout, bout,
                              active, query, attended, gates, hidden_gates, h_proposed, qkv, lse, read)
        ctx.mark_non_differentiable(active, attention)
        return h_out, c_out, active, attention

    @staticmethod
    def backward(ctx, grad_h, grad_c, _grad_active, _grad_attention):
        kernels = _kernels()
        sizes: StepSizes = ctx.sizes
        (h, c, slots, keep_in, keep_comm, wq, wih, whh, bias, bias_hn, wqkv, wout, bout,
         active, query, attended, gates, hidden_gates, h_proposed, qkv, lse, read) = ctx.saved_tensors
        batch, n, m = h.shape[0], sizes.N, sizes.M
        new = h.new_empty
        grad_h = grad_h.contiguous()
        grad_c = grad_c.contiguous() if not sizes.IS_GRU else grad_h
        dh = new(batch, n * m)
        dc = new(batch, n * m) if not sizes.IS_GRU else dh
        dslots = torch.empty_like(slots)
        dquery = torch.empty_like(query)
        dgates = torch.empty_like(gates)
        dhidden_gates = torch.empty_like(gates) if sizes.IS_GRU else dgates
        dqkv = torch.empty_like(qkv)
        dout = new(n, batch, 2 * m) if sizes.HAS_COMM else dh
        dread = torch.empty_like(read)
        delta = torch.empty_like(lse)
        dattended = torch.empty_like(attended)
        dlogit = new(n, batch, sizes.H, sizes.S)
        kept = torch.empty_like(dlogit)
        _launch(kernels.layer_step_backward, batch, [
            *_step_inputs(h, c, slots, wq, wih, whh, bias, bias_hn, wqkv, wout, bout, keep_in, keep_comm),
            active, query, attended, gates, hidden_gates, qkv, lse, read,
            grad_h, grad_c, dh, dc, dslots, dquery, dgates, dhidden_gates, dqkv, dout,
            dread, delta, dattended, dlogit, kept, batch,
        ], sizes.constants(keep_in is not None, keep_comm is not None, ctx.precision))
        # Weight gradients: one batched matmul each over the batch, module by module (N, in, out).
        h_modules = h.view(batch, n, m).transpose(0, 1)  # (N, B, M)
        d_wq = h_modules.transpose(1, 2) @ dquery
        d_wih = attended.transpose(1, 2) @ dgates
        d_whh = h_modules.transpose(1, 2) @ dhidden_gates
        d_bias = dgates.sum(dim=1)
        d_bias_hn = dhidden_gates[..., 2 * m :].sum(dim=1) if sizes.IS_GRU else None
        d_wqkv = d_wout = d_bout = None
        if sizes.HAS_COMM:
            h_read = torch.where(active.t().unsqueeze(-1).bool(), h_proposed, h_modules)  # what communication read
            d_wqkv = h_read.transpose(1, 2) @ dqkv
            d_wout = read.transpose(1, 2) @ dout
            d_bout = dout.sum(dim=1)
        return (None, None, dh, None if sizes.IS_GRU else dc, dslots, None, None,
                d_wq, d_wih, d_whh, d_bias, d_bias_hn, d_wqkv, d_wout, d_bout)


def fused_step(
    sizes: StepSizes,
    weights: StepWeights,
    h: Tensor,
    c: Tensor,
    slots: Tensor,
    keep_in: Tensor | None,
    keep_comm: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer step through the fused kernels, what the torch backend computes from the slots on.

    ``h, c (B, N*M)`` (GRU: ``c`` is ignored), ``slots (B, S, H*D + H*V)`` (the slot projections, in
    ``h``'s dtype), and the scaled dropout keep masks ``keep_in (N, B, H, S)`` and ``keep_comm
    (N, N, B, H2)`` (None without dropout). Returns ``h', c'`` (GRU: ``c' = h'``), the active modules
    ``(B, N)`` bool and the head-averaged input attention ``(B, N, 1 + S)``. The dots' precision is
    chosen here, once for the step's forward and backward (:func:`dot_precision`).
    """
    _check_dtype(h)
    h = h.contiguous()
    c = None if sizes.IS_GRU else c.contiguous()
    h_new, c_new, active, attention = FusedLayerStep.apply(
        sizes, dot_precision(h), h, c, slots.contiguous(), keep_in, keep_comm, *weights
    )
    return h_new, h_new if sizes.IS_GRU else c_new, active.bool(), attention
