"""The recurrent cores every experiment compares, built from one typed config.

- ``brims``: :class:`brims.BRIMs` (layers with top-down, the paper's model);
- ``brims-no-top-down``: the same stack with ``top_down=False`` (stacked RIMs, the ablation);
- ``rims``: :class:`brims.RIMs`, one layer without top-down (the RIMs paper: 600 units, 6
  modules, 4 active); its ``brims`` options must describe one layer;
- ``lstm``: ``torch.nn.LSTM`` with the ``brims`` options' layers and (equal) hidden sizes.

Every core maps ``(T, B, F)`` to ``(T, B, H)`` and can carry a state across calls.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from brims.config import BRIMsConfig
from brims.model import BRIMs

CORE_KINDS = ("brims", "rims", "brims-no-top-down", "lstm")
MODULAR_KINDS = ("brims", "rims", "brims-no-top-down")
BRIMS_FIELDS = tuple(f.name for f in dataclasses.fields(BRIMsConfig))
SET_BY_THE_TASK = ("input_size", "batch_first")  # the task's input width; the harness runs time-first


@dataclass(frozen=True)
class CoreConfig:
    """Which core, whether to compile it, and the options of :class:`brims.BRIMsConfig`.

    Attributes:
        kind: one of ``brims``, ``rims``, ``brims-no-top-down``, ``lstm``.
        compile: run the modular cores' time loop through ``torch.compile`` (``BRIMs.compile_step``).
        brims: fields of :class:`brims.BRIMsConfig` (its defaults for the rest), except
            ``input_size`` and ``batch_first``, which the task sets. ``top_down`` follows the
            kind. The ``lstm`` core reads only ``hidden_sizes`` (one LSTM layer each, equal
            sizes) and ignores the attention options, so that one preset serves every kind.
    """

    kind: str = "brims"
    compile: bool = False
    brims: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CORE_KINDS:
            raise ValueError(f"model.core.kind must be one of {CORE_KINDS}, got {self.kind!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"model.core.compile must be true or false, got {self.compile!r}")
        if not isinstance(self.brims, dict):
            raise ValueError(f"model.core.brims must be a mapping of BRIMsConfig fields, got {self.brims!r}")
        if self.compile and self.brims.get("backend") == "triton" and self.kind != "lstm":
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
        if self.kind == "lstm" and self.brims.get("cell", "lstm") != "lstm":
            raise ValueError(f"model.core.brims.cell={self.brims['cell']!r} has no meaning for the lstm core")
        # Tuples, so that a config read from YAML equals one built in code.
        object.__setattr__(self, "brims", {k: tuple(v) if isinstance(v, list) else v for k, v in self.brims.items()})
        # Validate now (naming the field), not when the model is built mid-run.
        if self.kind == "lstm":
            if len(set(self.hidden_sizes)) != 1:
                raise ValueError(f"the lstm core needs equal model.core.brims.hidden_sizes, got {list(self.hidden_sizes)}")
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
        from brims_experiments.runs import ConfigError  # the training stack, not needed to import this module

        if self.kind == "lstm" or self.option("backend") != "triton":
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


class RecurrentCore(nn.Module):
    """``(T, B, F) -> (T, B, H)`` with any of the four kinds; diagnostics for modular kinds."""

    def __init__(self, config: CoreConfig, input_size: int) -> None:
        super().__init__()
        self.config = config
        self.network: nn.Module
        if config.kind == "lstm":
            sizes = config.hidden_sizes
            self.network = nn.LSTM(input_size, sizes[0], num_layers=len(sizes))
        else:
            # RIMs is the one-layer, no-top-down BRIMs: the same class computes it.
            self.network = BRIMs(config.brims_config(input_size))
            if config.compile:
                self.network.compile_step()

    @property
    def is_modular(self) -> bool:
        return self.config.kind != "lstm"

    def forward(self, x: Tensor, state: Any = None, *, return_diagnostics: bool = False):
        """``x (T, B, F)`` → ``(output (T, B, H), state, diagnostics or None)``."""
        if not self.is_modular:
            if return_diagnostics:
                raise ValueError("diagnostics need a modular core (brims, rims, brims-no-top-down), not lstm")
            output, state = self.network(x, state)  # (T, B, H)
            return output, state, None
        if return_diagnostics:
            return self.network(x, state, return_diagnostics=True)
        output, state = self.network(x, state)  # (T, B, H)
        return output, state, None
