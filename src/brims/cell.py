"""One time step of every BRIMs layer (the cell), the loop over steps, and the state types.

Dimension legend: T = time steps, B = batch, F = input features, L = layers,
n_l / m_l = modules / units per module of layer l, S_l = non-null slots of layer l.

:class:`BRIMsCell` is one time step of every layer, bottom to top (like ``nn.LSTMCell``), for
step-by-step loops (RL, generation); :func:`run_steps` is the time loop over it that
:class:`brims.BRIMs` and the compiled backend run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from brims.backends.fused_layer import FusedBRIMsLayer
from brims.config import BRIMsConfig
from brims.layer import BRIMsLayer


class BRIMsState(NamedTuple):
    """Recurrent state: one ``(B, hidden_sizes[l])`` tensor per layer in ``h`` and ``c``.

    Module ``k`` of layer ``l`` owns units ``k*m_l .. (k+1)*m_l - 1``. For GRU cells ``c``
    mirrors ``h``.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]

    def detach(self) -> BRIMsState:
        """The same values cut from the graph (truncated back-propagation through time)."""
        return BRIMsState(tuple(h.detach() for h in self.h), tuple(c.detach() for c in self.c))

    def reset_rows(self, rows: Tensor) -> BRIMsState:
        """Zero the state of the batch rows where ``rows`` (bool, ``(B,)``) is True.

        Raises ``ValueError`` for anything else: another dtype (a float or int mask would have to
        be guessed at), another rank, or a length other than the state's batch.
        """
        batch = self.h[0].shape[0]
        if not isinstance(rows, Tensor) or rows.dtype != torch.bool or rows.dim() != 1:
            got = (
                f"a {rows.dtype} tensor of shape {tuple(rows.shape)}"
                if isinstance(rows, Tensor)
                else type(rows).__name__
            )
            raise ValueError(f"reset_rows needs a bool tensor of shape (B,)=({batch},), got {got}")
        if rows.shape[0] != batch:
            raise ValueError(f"reset_rows needs a mask of length B={batch} (the state's batch), got length {rows.shape[0]}")
        reset = rows.unsqueeze(-1)  # (B, 1)
        return BRIMsState(
            tuple(torch.where(reset, 0.0, h) for h in self.h), tuple(torch.where(reset, 0.0, c) for c in self.c)
        )


class BRIMsDiagnostics(NamedTuple):
    """What the modules did, one tensor per layer.

    ``active[l]``: ``(T, B, n_l)`` bool, which modules updated at each step.
    ``attention[l]``: ``(T, B, n_l, 1 + S_l)``, head-averaged input attention over the slots
    ``null, bottom_up[, top_down]`` (the top layer and top-down-free models have no top-down).
    The single-step cell returns the same without the ``T`` axis.
    """

    active: tuple[Tensor, ...]
    attention: tuple[Tensor, ...]


def as_config(config: int | BRIMsConfig | Any, args: Sequence[Any], options: dict[str, Any]) -> BRIMsConfig:
    """A :class:`BRIMsConfig` from either a config or ``BRIMsConfig``'s own arguments."""
    if isinstance(config, BRIMsConfig):
        if args or options:
            raise TypeError(f"pass either a BRIMsConfig or BRIMsConfig's arguments, not both: {sorted(options)}")
        return config
    return BRIMsConfig(config, *args, **options)


class BRIMsCell(nn.Module):
    """One time step of BRIMs for every layer, bottom to top.

    ``BRIMsCell(config)`` or ``BRIMsCell(input_size, hidden_sizes=..., ...)`` (the fields of
    :class:`BRIMsConfig`). ``output, state = cell(x_t, state)`` with ``x_t (B, input_size)``;
    ``output`` is the top layer's new ``h``. ``BRIMs(...).cell`` is the cell of that network.
    """

    def __init__(self, config: int | BRIMsConfig, *args: Any, **options: Any) -> None:
        super().__init__()
        self.config = as_config(config, args, options)
        layer_type = FusedBRIMsLayer if self.config.backend == "triton" else BRIMsLayer  # chosen once, here
        self.layers = nn.ModuleList(layer_type(self.config, index) for index in range(self.config.num_layers))

    def step(self, x: Tensor, state: BRIMsState) -> tuple[BRIMsState, BRIMsDiagnostics]:
        """One step from ``x (B, F)`` and a checked ``state``: the new state and what the modules did.

        Layer ``l`` reads the layer below at this step (``x`` for the bottom layer) and, when it
        reads top-down, the layer above at the previous step, ``state.h[l + 1]``.

        Note (departure from the released code): every layer reads the one above, as in the
        paper; the released code feeds only the top layer into the bottom one (the same for two
        layers).
        """
        h, c, active, attention = [], [], [], []
        bottom_up = x  # (B, F)
        for index, layer in enumerate(self.layers):
            top_down = state.h[index + 1] if layer.reads_top_down else None  # (B, hidden_{l+1}), from t-1
            out = layer(state.h[index], state.c[index], bottom_up, top_down)
            h.append(out.h)  # (B, hidden_l)
            c.append(out.c)
            active.append(out.active)  # (B, n_l)
            attention.append(out.attention)  # (B, n_l, 1 + S_l)
            bottom_up = out.h
        return BRIMsState(tuple(h), tuple(c)), BRIMsDiagnostics(tuple(active), tuple(attention))

    def forward(
        self,
        x: Tensor,
        state: BRIMsState | None = None,
        *,
        reset: Tensor | None = None,
        return_diagnostics: bool = False,
    ) -> tuple[Tensor, BRIMsState] | tuple[Tensor, BRIMsState, BRIMsDiagnostics]:
        """One step: ``x (B, input_size)`` → output ``(B, hidden_sizes[-1])`` and the new state.

        ``reset`` (bool ``(B,)``) zeroes those rows' state first, e.g. at episode starts.
        """
        x = self.check_input(x, 2, "(B, input_size)")
        state = self.check_state(state, x.shape[0], x)
        if reset is not None:
            if not isinstance(reset, Tensor) or reset.shape != (x.shape[0],):
                shape = tuple(reset.shape) if isinstance(reset, Tensor) else type(reset).__name__
                raise ValueError(f"reset must have shape (B,)=({x.shape[0]},), got {shape}")
            state = state.reset_rows(reset)
        state, diagnostics = self.step(x, state)
        if return_diagnostics:
            return state.h[-1], state, diagnostics
        return state.h[-1], state

    # ---- state and input checks ----------------------------------------------------------------

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BRIMsState:
        """Zero state for ``batch_size`` sequences (on the parameters' device/dtype by default)."""
        reference = self._reference_parameter()
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        h = tuple(torch.zeros(batch_size, size, device=device, dtype=dtype) for size in self.config.hidden_sizes)
        c = h if self.config.cell == "gru" else tuple(torch.zeros_like(t) for t in h)
        return BRIMsState(h, c)

    def check_state(self, state: Any, batch_size: int, like: Tensor) -> BRIMsState:
        """Validate a user-given state against the input ``like``; ``None`` gives zeros."""
        if state is None:
            return self.init_state(batch_size, like.device, like.dtype)
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"state must be a BRIMsState (h, c), got {type(state).__name__}")
        state = BRIMsState(*state)
        num_layers = self.config.num_layers
        for name, tensors in (("h", state.h), ("c", state.c)):
            if not isinstance(tensors, (tuple, list)) or len(tensors) != num_layers:
                raise ValueError(f"state.{name} must hold one tensor per layer ({num_layers}), got {tensors!r:.80}")
            for layer, (tensor, size) in enumerate(zip(tensors, self.config.hidden_sizes)):
                where = f"state.{name}[{layer}]"
                if not isinstance(tensor, Tensor):
                    raise TypeError(f"{where} must be a tensor, got {type(tensor).__name__}")
                if tuple(tensor.shape) != (batch_size, size):
                    raise ValueError(
                        f"{where} has shape {tuple(tensor.shape)}, expected (batch={batch_size}, hidden={size})"
                    )
                if tensor.device != like.device:
                    raise ValueError(f"{where} is on {tensor.device}, but the input is on {like.device}")
                if tensor.dtype != like.dtype:
                    raise ValueError(f"{where} has dtype {tensor.dtype}, but the input has {like.dtype}")
        return BRIMsState(tuple(state.h), tuple(state.c))

    def check_input(self, x: Any, expected_rank: int, layout: str) -> Tensor:
        """Validate the input's type, rank, features, dtype and device against the parameters."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a tensor of shape {layout}, got {type(x).__name__}")
        if x.dim() != expected_rank:
            raise ValueError(f"input must have shape {layout} ({expected_rank} dims), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.input_size:
            raise ValueError(
                f"input has {x.shape[-1]} features (last dim), expected input_size={self.config.input_size}"
            )
        if x.numel() == 0:
            raise ValueError(f"input is empty: shape {tuple(x.shape)} (every dim of {layout} must be >= 1)")
        reference = self._reference_parameter()
        if x.device != reference.device:
            raise ValueError(f"input is on {x.device}, but the model's parameters are on {reference.device}")
        if x.dtype != reference.dtype:
            if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.get_autocast_dtype(x.device.type):
                # Mixed precision: the layer before us ran in the autocast dtype. The state stays in
                # the parameters' dtype; autocast still runs our matmuls in the low precision.
                return x.to(reference.dtype)
            raise ValueError(f"input has dtype {x.dtype}, but the model's parameters are {reference.dtype}")
        return x

    def _reference_parameter(self) -> Tensor:
        return self.layers[0].cell.weight_hh


Step = Callable[[Tensor, BRIMsState], tuple[BRIMsState, BRIMsDiagnostics]]  # BRIMsCell.step's signature


def run_steps(
    step: Step, x_steps: Sequence[Tensor], state: BRIMsState, return_diagnostics: bool
) -> tuple[Tensor, BRIMsState, BRIMsDiagnostics | None]:
    """The time loop: ``step`` (:meth:`BRIMsCell.step`, or a backend's) over ``x_steps`` (each ``(B, F)``)
    from ``state``.

    Returns the top layer's ``h`` at every step ``(K, B, hidden_L)``, the final state and, with
    diagnostics, per layer the active masks ``(K, B, n)`` and attention ``(K, B, n, 1 + S)``.
    """
    outputs, steps = [], []
    for x_t in x_steps:
        state, diagnostics = step(x_t, state)
        outputs.append(state.h[-1])  # (B, hidden_L)
        if return_diagnostics:
            steps.append(diagnostics)
    return torch.stack(outputs), state, join_diagnostics(steps, torch.stack) if return_diagnostics else None


def join_diagnostics(parts: Sequence[BRIMsDiagnostics], join: Callable[[list[Tensor]], Tensor]) -> BRIMsDiagnostics:
    """Per layer, ``join`` (``torch.stack`` for steps, ``torch.cat`` for chunks) of the parts' tensors."""
    return BRIMsDiagnostics(
        tuple(join(list(layer)) for layer in zip(*(d.active for d in parts))),
        tuple(join(list(layer)) for layer in zip(*(d.attention for d in parts))),
    )
