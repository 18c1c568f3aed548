"""The recurrent cores every experiment compares, built from one typed config.

- ``brims``: :class:`brims.BRIMs` (layers with top-down, the paper's model);
- ``brims-no-top-down``: the same stack with ``top_down=False`` (stacked RIMs, the ablation);
- ``rims``: :class:`brims.RIMs`, one layer without top-down (the RIMs paper: 600 units, 6
  modules, 4 active); its ``brims`` options must describe one layer;
- ``lstm``: ``torch.nn.LSTM`` with the ``brims`` options' layers and (equal) hidden sizes;
- ``memoryless``: the same layers and sizes as the LSTM, but feed-forward (``tanh`` layers applied
  to each step alone): the baseline that shows whether a task needs memory at all (the RL memory
  tasks' "memoryless agent"). It carries an LSTM-shaped state of zeros that it never reads, so
  that every caller treats it as it treats the LSTM.

Every core maps ``(T, B, F)`` to ``(T, B, H)`` and can carry a state across calls. The state's
type depends on the kind (a :class:`brims.BRIMsState` for the modular kinds, ``nn.LSTM``'s
``(h, c)`` for ``lstm``), and only this module looks inside one: :class:`RecurrentCore` starts,
resets, detaches, moves, flattens and serialises the state of every kind, and the module
functions :func:`detach_state`, :func:`state_to`, :func:`state_to_plain` and
:func:`state_from_plain` serve code that holds a state without its core (a checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from brims.cell import BRIMsState
from brims.config import BRIMsConfig
from brims.model import BRIMs

CORE_KINDS = ("brims", "rims", "brims-no-top-down", "lstm", "memoryless")
MODULAR_KINDS = ("brims", "rims", "brims-no-top-down")
LAYERED_KINDS = ("lstm", "memoryless")  # equal hidden sizes, one layer each; nn.LSTM's (h, c) state
BRIMS_FIELDS = tuple(f.name for f in dataclasses.fields(BRIMsConfig))
SET_BY_THE_TASK = ("input_size", "batch_first")  # the task's input width; the harness runs time-first

State = Any
"""A core's carried state: :class:`brims.BRIMsState` (``h`` and ``c``, one ``(B, H_l)`` tensor per
layer) for the modular kinds, ``nn.LSTM``'s ``(h, c)`` (each ``(L, B, H)``) for ``lstm``."""
PLAIN_KINDS = ("brims", "lstm")  # the ``kind`` of a plain state: every modular kind stores "brims"


@dataclass(frozen=True)
class CoreConfig:
    """Which core, whether to compile it, and the options of :class:`brims.BRIMsConfig`.

    Attributes:
        kind: one of ``brims``, ``rims``, ``brims-no-top-down``, ``lstm``, ``memoryless``.
        compile: run the modular cores' time loop through ``torch.compile`` (``BRIMs.compile_step``).
        brims: fields of :class:`brims.BRIMsConfig` (its defaults for the rest), except
            ``input_size`` and ``batch_first``, which the task sets. ``top_down`` follows the
            kind. The ``lstm`` core reads only ``hidden_sizes`` (one LSTM layer each, equal
            sizes) and ignores the attention options, so that one preset serves every kind; so
            does ``memoryless``.
    """

    kind: str = "brims"
    compile: bool = False
    brims: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CORE_KINDS:
            raise ValueError(f"model.core.kind must be one of {CORE_KINDS}, got {self.kind!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"model.core.compile must be true or false, got {self.compile!r}")  # noqa: TRY004 - ConfigError is the user-facing error
        if not isinstance(self.brims, dict):
            raise ValueError(f"model.core.brims must be a mapping of BRIMsConfig fields, got {self.brims!r}")  # noqa: TRY004 - ConfigError is the user-facing error
        if self.compile and self.brims.get("backend") == "triton" and self.kind in MODULAR_KINDS:
            raise ValueError(
                "compile=true compiles the torch backend, but model.core.brims.backend=triton "
                "is fused already: set model.core.compile=false"
            )
        for name in self.brims:
            if name in SET_BY_THE_TASK:
                raise ValueError(f"model.core.brims.{name} is set by the task, not by the config")
            if name not in BRIMS_FIELDS:
                known = ", ".join(f for f in BRIMS_FIELDS if f not in SET_BY_THE_TASK)
                raise ValueError(f"unknown field model.core.brims.{name}; the BRIMsConfig fields are {known}")
        if "top_down" in self.brims and self.kind != "brims":
            raise ValueError(f"model.core.brims.top_down is set by the kind: {self.kind} has no top-down")
        if self.kind in LAYERED_KINDS and self.brims.get("cell", "lstm") != "lstm":
            raise ValueError(f"model.core.brims.cell={self.brims['cell']!r} has no meaning for the {self.kind} core")
        # Tuples, so that a config read from YAML equals one built in code.
        object.__setattr__(self, "brims", {k: tuple(v) if isinstance(v, list) else v for k, v in self.brims.items()})
        # Validate now (naming the field), not when the model is built mid-run.
        if self.kind in LAYERED_KINDS:
            if len(set(self.hidden_sizes)) != 1:
                raise ValueError(f"the {self.kind} core needs equal model.core.brims.hidden_sizes, got "
                                 f"{list(self.hidden_sizes)}")
            return
        config = self.brims_config(input_size=1)
        if self.kind == "rims" and config.num_layers != 1:
            raise ValueError(
                f"model.core.kind=rims is one layer, but model.core.brims.hidden_sizes has {config.num_layers} "
                f"({list(config.hidden_sizes)}): give hidden_sizes, num_modules and top_k one entry each, "
                "e.g. model.core.brims.hidden_sizes=[600] model.core.brims.num_modules=[6] model.core.brims.top_k=[4]"
            )

    def check_device(self, device_type: str, setting: str) -> None:
        """Refuse, before a run starts, a backend that ``device_type`` cannot run (``setting`` names the fix)."""
        from brims_experiments.config_files import ConfigError

        if self.kind in LAYERED_KINDS or self.option("backend") != "triton":
            return
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("model.core.brims.backend=triton needs the triton package: pip install 'brims[triton]'")
        if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                f"model.core.brims.backend=triton runs its kernels on a CUDA GPU: set {setting}, or use "
                "model.core.brims.backend=torch on a CPU"
            )

    @classmethod
    def explain_unknown(cls, name: str) -> str | None:
        """Why a field of the layout before brims 0.2 (BRIMs options directly under ``model.core``) is unknown."""
        if name in BRIMS_FIELDS:
            return (
                f"model.core.{name}: the BRIMs options moved under model.core.brims in brims 0.2; "
                f"write model.core.brims.{name} (in YAML, indent it under `brims:`)"
            )
        return None

    def option(self, name: str) -> Any:
        """The BRIMs option ``name``: as given, else :class:`BRIMsConfig`'s default."""
        if name in self.brims:
            return self.brims[name]
        return BRIMsConfig.__dataclass_fields__[name].default

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Hidden size of each layer (validated as BRIMsConfig validates it, for every kind)."""
        sizes = self.option("hidden_sizes")
        layers = (1,) * len(sizes) if isinstance(sizes, tuple) else 1
        try:  # the LSTM reads no module counts: validate the sizes alone
            return BRIMsConfig(input_size=1, hidden_sizes=sizes, num_modules=layers, top_k=layers).hidden_sizes
        except ValueError as error:
            raise ValueError(f"model.core.brims.hidden_sizes: {error}") from None

    @property
    def is_modular_kind(self) -> bool:
        """Whether the kind is a BRIMs network (brims, rims, brims-no-top-down)."""
        return self.kind in MODULAR_KINDS

    @property
    def hidden_size(self) -> int:
        """Features of the core's output at each step (the top layer's hidden size)."""
        return self.hidden_sizes[-1]

    def brims_config(self, input_size: int) -> BRIMsConfig:
        """The :class:`BRIMsConfig` of this core for inputs of ``input_size`` features."""
        top_down = {} if self.kind == "brims" else {"top_down": False}
        try:
            return BRIMsConfig(input_size=input_size, **self.brims, **top_down)
        except ValueError as error:
            # BRIMsConfig's messages start with the field they are about: name its path.
            name = re.match(r"[a-z_]*", str(error)).group()
            where = f"model.core.brims.{name}" if name in BRIMS_FIELDS else "model.core.brims"
            raise ValueError(f"{where}: {error}") from None

    def as_dict(self) -> dict[str, Any]:
        brims = {k: list(v) if isinstance(v, tuple) else v for k, v in self.brims.items()}
        return {"kind": self.kind, "compile": self.compile, "brims": brims}


class FeedForward(nn.Module):
    """The memoryless core: ``y_t = tanh(W_L ... tanh(W_1 x_t + b_1) ... + b_L)``, each step alone.

    ``forward(x (T, B, F), state)`` has ``nn.LSTM``'s signature; the state (``(h, c)``, each
    ``(L, B, H)``) is returned as given, or zeros, and never read: the output at step ``t`` is a
    function of ``x_t`` only.
    """

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        widths = [input_size, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.num_layers, self.hidden_size = len(hidden_sizes), hidden_sizes[-1]

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        for layer in self.layers:
            x = torch.tanh(layer(x))  # (T, B, H)
        if state is None:
            h = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)  # (L, B, H)
            state = (h, torch.zeros_like(h))
        return x, state


class RecurrentCore(nn.Module):
    """``(T, B, F) -> (T, B, H)`` with any of the four kinds; diagnostics for modular kinds."""

    def __init__(self, config: CoreConfig, input_size: int) -> None:
        super().__init__()
        self.config = config
        self.network: nn.Module
        if config.kind == "lstm":
            sizes = config.hidden_sizes
            self.network = nn.LSTM(input_size, sizes[0], num_layers=len(sizes))
        elif config.kind == "memoryless":
            self.network = FeedForward(input_size, config.hidden_sizes)
        else:
            # RIMs is the one-layer, no-top-down BRIMs: the same class computes it.
            self.network = BRIMs(config.brims_config(input_size))
            if config.compile:
                self.network.compile_step()

    @property
    def is_modular(self) -> bool:
        return self.config.kind in MODULAR_KINDS

    def forward(self, x: Tensor, state: Any = None, *, return_diagnostics: bool = False):
        """``x (T, B, F)`` → ``(output (T, B, H), state, diagnostics or None)``."""
        if not self.is_modular:
            if return_diagnostics:
                raise ValueError(f"diagnostics need a modular core (brims, rims, brims-no-top-down), not "
                                 f"{self.config.kind}")
            output, state = self.network(x, state)  # (T, B, H)
            return output, state, None
        if return_diagnostics:
            return self.network(x, state, return_diagnostics=True)
        output, state = self.network(x, state)  # (T, B, H)
        return output, state, None

    # ---- the carried state, whatever the kind -----------------------------------------------------

    def initial_state(self, batch_size: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        """Zeros for ``batch_size`` sequences (on the parameters' device and dtype by default): the
        state ``forward`` starts from when given none."""
        if self.is_modular:
            return self.network.init_state(batch_size, device, dtype)
        reference = next(self.network.parameters())
        h = torch.zeros(self.network.num_layers, batch_size, self.network.hidden_size,
                        device=reference.device if device is None else device,
                        dtype=reference.dtype if dtype is None else dtype)  # (L, B, H)
        return h, torch.zeros_like(h)

    def reset_rows(self, state: State, rows: Tensor) -> State:
        """``state`` with the rows where ``rows`` (bool ``(B,)``) is True set to zeros (episode
        starts); the other rows are unchanged, bit for bit. ``state`` itself is left as it is."""
        batch = self._parts(state)[0].shape[0]
        if not isinstance(rows, Tensor):
            got = type(rows).__name__
        elif rows.shape != (batch,):
            got = f"shape {tuple(rows.shape)}"
        elif rows.dtype != torch.bool:
            got = f"dtype {rows.dtype}"
        else:
            got = None
        if got is not None:
            raise ValueError(f"rows must be a bool tensor of shape (B,)=({batch},), got {got}")
        if self.is_modular:
            return state.reset_rows(rows)
        reset = rows.view(1, -1, 1)  # (1, B, 1)
        return tuple(torch.where(reset, 0.0, t) for t in state)  # (L, B, H) each

    def detach_state(self, state: State | None) -> State | None:
        """The same values cut from the graph (truncated back-propagation through time)."""
        return detach_state(state)

    def state_to(self, state: State | None, device: torch.device | str) -> State | None:
        """The state on ``device`` (a resumed run restores it on the CPU)."""
        return state_to(state, device)

    @property
    def state_size(self) -> int:
        """``S``, the features of :meth:`flatten_state`'s ``(B, S)``: ``h`` and ``c`` of every layer."""
        return 2 * sum(self.config.hidden_sizes)

    def _parts(self, state: State) -> list[Tensor]:
        """The state's tensors, one ``(B, H_l)`` per layer: ``h`` bottom to top, then ``c``."""
        if self.is_modular:
            return [*state.h, *state.c]
        h, c = state  # (L, B, H) each
        return [*h.unbind(0), *c.unbind(0)]

    def flatten_state(self, state: State) -> Tensor:
        """``(B, S)``: ``h`` of every layer bottom to top, then ``c`` (a rollout stores it per step)."""
        return torch.cat(self._parts(state), dim=-1)

    def unflatten_state(self, flat: Tensor) -> State:
        """The state of :meth:`flatten_state`'s ``(B, S)``."""
        parts = flat.split(list(self.config.hidden_sizes) * 2, dim=-1)
        half = len(parts) // 2
        if self.is_modular:
            return BRIMsState(tuple(parts[:half]), tuple(parts[half:]))
        return torch.stack(parts[:half]).contiguous(), torch.stack(parts[half:]).contiguous()  # (L, B, H) each

    def state_to_plain(self, state: State | None) -> dict[str, Any] | None:
        """The state as a plain dict of tensors, for checkpoints (see :func:`state_to_plain`)."""
        return state_to_plain(state)

    def state_from_plain(self, plain: dict[str, Any] | None) -> State | None:
        """The state of :meth:`state_to_plain`'s dict; refuses one of the other family's kinds."""
        if plain is not None:
            mine = "brims" if self.is_modular else "lstm"
            if plain.get("kind") in PLAIN_KINDS and plain["kind"] != mine:
                article = "an" if mine == "lstm" else "a"
                raise ValueError(f"a {plain['kind']} state cannot continue {article} {mine} core")
        return state_from_plain(plain)


# ---- states held without their core (checkpoints, the language task's carried state) --------------


def _map_state(function: Callable[[Tensor], Tensor], state: State | None) -> State | None:
    """``function`` applied to each of the state's tensors, the kind's structure kept."""
    if state is None:
        return None
    if isinstance(state, BRIMsState):
        return BRIMsState(tuple(function(t) for t in state.h), tuple(function(t) for t in state.c))
    h, c = state
    return function(h), function(c)


def detach_state(state: State | None) -> State | None:
    """The state's values cut from the graph (truncated back-propagation through time)."""
    return _map_state(Tensor.detach, state)


def state_to(state: State | None, device: torch.device | str) -> State | None:
    """The state on ``device``."""
    return _map_state(lambda t: t.to(device), state)


def state_to_plain(state: State | None) -> dict[str, Any] | None:
    """A state as plain lists of tensors (checkpoints load with ``weights_only=True``).

    ``{"kind": "brims", "h": [(B, H_l) per layer], "c": [...]}`` for every modular kind,
    ``{"kind": "lstm", "h": [(L, B, H)], "c": [(L, B, H)]}`` for ``lstm``: the format
    checkpoints have always stored.
    """
    if state is None:
        return None
    if isinstance(state, BRIMsState):
        return {"kind": "brims", "h": list(state.h), "c": list(state.c)}
    return {"kind": "lstm", "h": [state[0]], "c": [state[1]]}


def state_from_plain(plain: dict[str, Any] | None) -> State | None:
    """The state of :func:`state_to_plain`'s dict."""
    if plain is None:
        return None
    kind = plain.get("kind")
    if kind not in PLAIN_KINDS:
        raise ValueError(f"unknown state kind {kind!r} in a checkpoint (expected one of {PLAIN_KINDS})")
    if kind == "brims":
        return BRIMsState(tuple(plain["h"]), tuple(plain["c"]))
    return plain["h"][0], plain["c"][0]
