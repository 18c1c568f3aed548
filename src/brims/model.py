"""The sequence modules: BRIMs over time (like ``nn.LSTM``) and RIMs, its one-layer case.

Dimension legend: T = time steps, B = batch, F = input features, n_l = modules of layer l.

:class:`BRIMs` runs a :class:`~brims.cell.BRIMsCell` over a sequence with
:func:`~brims.cell.run_steps`; ``compile_step()`` opts into the compiled backend
(:mod:`brims.backends.compiled`), which runs the same steps with the input projected for the whole sequence
(:mod:`brims.backends.projected`; equal up to float rounding). ``save_pretrained`` and
``from_pretrained`` write and read a folder of ``config.json`` and ``model.safetensors``
(:mod:`brims.pretrained`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from brims import pretrained
from brims.backends.compiled import CompiledLoop
from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState, as_config, run_steps
from brims.config import BRIMsConfig

CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(BRIMsConfig))
# Class attributes of a dataclass hold its fields' defaults: the signatures below read them from
# BRIMsConfig, the one declaration of the options and their defaults.
DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(BRIMsConfig)}


class BRIMs(nn.Module):
    """Bidirectional Recurrent Independent Mechanisms (Mittal et al., ICML 2020), like ``nn.LSTM``.

    ``BRIMs(input_size, hidden_sizes=..., ...)`` (the fields of :class:`BRIMsConfig`, in its
    order) or ``BRIMs(config)``. The defaults are the authors' released sequential-MNIST
    configuration: two layers of 300 units, 6 and 3 modules of which 4 and 2 are active, about
    1.8 M parameters. ``BRIMs(8)`` builds that whole network; ``print(model)`` states the sizes
    and the parameter count.

    ``output, state = model(x)`` with ``x`` of shape ``(T, B, input_size)`` (``(B, T, ...)``
    when ``batch_first``); ``output`` is the top layer's state at every step,
    ``(T, B, hidden_sizes[-1])``. Pass ``state`` back in to continue a sequence exactly.
    ``return_diagnostics=True`` also returns :class:`BRIMsDiagnostics`.

    ``model.save_pretrained(folder)`` writes the config and weights; ``BRIMs.from_pretrained(folder)``
    reads them back (:mod:`brims.pretrained`).
    """

    def __init__(self, input_size: int | BRIMsConfig, *args: Any, **options: Any) -> None:
        # The signature and the docstring are BRIMsConfig's fields (set below the class): the
        # options are declared once, in the config.
        super().__init__()
        refuse_unknown_options(type(self).__name__, {k: v for k, v in options.items() if k not in CONFIG_FIELDS})
        self.config = as_config(input_size, args, options)
        self.cell = BRIMsCell(self.config)
        self.compiled: CompiledLoop | None = None  # set by compile_step()

    @classmethod
    def from_config(cls, config: BRIMsConfig | dict[str, Any]) -> BRIMs:
        """The model of a :class:`BRIMsConfig` or of a mapping of its fields (``config.to_dict()``)."""
        if not isinstance(config, BRIMsConfig):
            config = BRIMsConfig.from_dict(config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> BRIMs:
        """The model that :meth:`save_pretrained` wrote to ``folder``, its weights on ``device``.

        The parameters keep the dtype they were saved in; the model is in training mode, as a new
        module is (call ``.eval()`` for inference: attention dropout is on in training mode).
        Raises ``FileNotFoundError`` or ``ValueError`` naming the file that is missing or wrong.
        """
        return pretrained.load_pretrained(folder, cls, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``folder`` (made if missing), each
        atomically; returns the folder. :meth:`from_pretrained` reads them back."""
        return pretrained.save_pretrained(self, folder)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BRIMsState:
        """Zero state for ``batch_size`` sequences (on the parameters' device and dtype by default)."""
        return self.cell.init_state(batch_size, device, dtype)

    def compile_step(self, steps_per_call: int = 4, **compile_options: Any) -> BRIMs:
        """Run the time loop through ``torch.compile``'d chunks of ``steps_per_call`` steps; returns ``self``.

        The opt-in compiled backend, :class:`brims.backends.compiled.CompiledLoop` (see there for
        the defaults per device); ``compile_options`` go to ``torch.compile``. It computes the same
        steps as the eager loop, with the input's projection done for the whole sequence at once
        (:mod:`brims.backends.projected`): the same numbers up to float rounding (tested). It compiles the torch backend: with ``backend="triton"``
        the steps are fused kernels already, and it refuses.

        What recompiles (each compile takes minutes on a CPU): the sequence length never (the steps
        left over after the last whole chunk run through a 1-step chunk); the batch size neither (the
        chunk's dimensions are symbolic), but for a batch of one and a first batch size equal to
        another size of the input, one graph more each. A variant is a chunk length (``steps_per_call``
        or 1) x grad mode x ``train()``/``eval()`` x ``return_diagnostics``, each compiled with its
        own budget of ``recompile_limit`` graphs (default 4; pass ``recompile_limit=N`` to change it).
        Past it, torch raises (the chunk compiles with ``fullgraph=True``) rather than run eagerly
        unnoticed, and the error's note names what the variant's calls varied.
        """
        if self.config.backend != "torch":
            raise ValueError(f"compile_step() compiles the torch backend; backend={self.config.backend!r} is fused already")
        self.compiled = CompiledLoop(self.cell, steps_per_call, compile_options)
        return self

    def forward(
        self, x: Tensor, state: BRIMsState | None = None, *, return_diagnostics: bool = False
    ) -> tuple[Tensor, BRIMsState] | tuple[Tensor, BRIMsState, BRIMsDiagnostics]:
        """Run the network over a sequence.

        Args:
            x: ``(T, B, input_size)``, or ``(B, T, input_size)`` when ``batch_first``; on the
                parameters' device and in their dtype.
            state: where to start: a :class:`BRIMsState`, one ``(B, hidden_sizes[l])`` tensor per
                layer in ``h`` and ``c`` (what :meth:`init_state` makes and every call returns);
                ``None`` (default) starts from zeros. Not ``nn.LSTM``'s ``(h, c)`` pair of tensors.
            return_diagnostics: also return what the modules did.

        Returns:
            ``(output, state)``, or ``(output, state, diagnostics)`` with ``return_diagnostics``:
            ``output`` is the top layer's ``h`` at every step, ``(T, B, hidden_sizes[-1])``
            (``(B, T, ...)`` when ``batch_first``); ``state`` is the :class:`BRIMsState` after
            the last step (pass it back in to continue the sequence exactly); ``diagnostics`` is a
            :class:`BRIMsDiagnostics`, per layer the active modules ``(T, B, n_l)`` (bool) and the
            input attention ``(T, B, n_l, 1 + S_l)`` (time and batch axes as ``output``'s).
        """
        layout = "(B, T, input_size)" if self.config.batch_first else "(T, B, input_size)"
        x = self.cell.check_input(x, 3, layout)
        if self.config.batch_first:
            x = x.transpose(0, 1)  # (T, B, F)
        refuse_tensor_pair(state)
        state = self.cell.check_state(state, x.shape[1], x)
        if self.compiled is None:
            # unbind, not x[t]: indexing makes backward O(T^2)
            output, state, diagnostics = run_steps(self.cell.step, x.unbind(0), state, return_diagnostics)
        else:
            output, state, diagnostics = self.compiled(x, state, return_diagnostics)
        if self.config.batch_first:
            output = output.transpose(0, 1)
            if diagnostics is not None:
                diagnostics = BRIMsDiagnostics(*(tuple(t.transpose(0, 1) for t in part) for part in diagnostics))
        if diagnostics is None:
            return output, state
        return output, state, diagnostics

    def extra_repr(self) -> str:
        config = self.config
        shown = {"input_size", "hidden_sizes", "num_modules", "top_k", "cell", "top_down"}
        parts = [f"{name}={getattr(config, name)!r}" for name in CONFIG_FIELDS if name in shown]
        parts += [
            f"{name}={getattr(config, name)!r}"
            for name in CONFIG_FIELDS
            if name not in shown and getattr(config, name) != DEFAULTS[name]
        ]
        parts.append(f"parameters={sum(p.numel() for p in self.parameters()):,}")
        return ", ".join(parts)


class RIMs(BRIMs):
    """Recurrent Independent Mechanisms (Goyal et al., 2019): one BRIMs layer, no top-down.

    ``RIMs(input_size, hidden_size=600, num_modules=6, top_k=4, **options)`` (the RIMs paper's
    sizes; ``options`` are the other fields of :class:`BRIMsConfig`, keyword only), or
    ``RIMs(config)`` with a one-layer config without top-down.
    """

    def __init__(self, input_size: int | BRIMsConfig, hidden_size: int = 600, num_modules: int = 6, top_k: int = 4,
                 **options: Any) -> None:
        if "top_down" in options or "hidden_sizes" in options:
            raise TypeError("RIMs is one layer without top-down: use hidden_size, num_modules and top_k")
        if "num_layers" in options:
            raise TypeError(
                "RIMs is one layer: for a stack of num_layers layers of H units use brims.BRIMs(input_size, "
                "hidden_sizes=(H,) * num_layers, num_modules=(n,) * num_layers, top_k=(k,) * num_layers)"
            )
        refuse_unknown_options(type(self).__name__, {k: v for k, v in options.items() if k not in CONFIG_FIELDS})
        sizes = {"hidden_size": hidden_size, "num_modules": num_modules, "top_k": top_k}
        if isinstance(input_size, BRIMsConfig):
            if input_size.num_layers != 1:
                raise ValueError(f"RIMs has one layer, got a config with {input_size.num_layers}")
            given = sorted(options) + [name for name, value in sizes.items() if value != RIMS_SIZES[name]]
            if given:
                raise TypeError(f"pass either a BRIMsConfig or RIMs' arguments, not both: {sorted(given)}")
            super().__init__(input_size)
            return
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int for RIMs (one layer), got {value!r}")  # noqa: TRY004 - ValueError is the tested contract
        super().__init__(input_size, (hidden_size,), (num_modules,), (top_k,), top_down=False, **options)


RIMS_SIZES = {"hidden_size": 600, "num_modules": 6, "top_k": 4}  # the RIMs paper's sequential-MNIST sizes
PER_LAYER = ("hidden_sizes", "num_modules", "top_k", "top_down")  # what RIMs sets for its one layer


def option_docs() -> dict[str, str]:
    """Each :class:`BRIMsConfig` field's description, from the ``Attributes:`` of its docstring."""
    docs: dict[str, str] = {}
    name = None
    for line in (BRIMsConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        entry = re.match(r"^ {8}(\w+): (.*)$", line)
        if entry and entry.group(1) in CONFIG_FIELDS:
            name = entry.group(1)
            docs[name] = entry.group(2).strip()
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
    return docs


def option_parameters(kind: Any, skip: tuple[str, ...]) -> list[inspect.Parameter]:
    """``BRIMsConfig``'s fields as parameters of ``kind`` with their defaults (all but ``input_size``)."""
    return [inspect.Parameter(field.name, kind, default=field.default, annotation=field.type)
            for field in dataclasses.fields(BRIMsConfig) if field.name != "input_size" and field.name not in skip]


def describe_options(skip: tuple[str, ...]) -> str:
    """``Args:`` lines for every option but ``skip``: its description and its default."""
    docs = option_docs()
    return "\n".join(f"    {field.name}: {docs[field.name]} Default ``{field.default!r}``."
                     for field in dataclasses.fields(BRIMsConfig) if field.name != "input_size" and field.name not in skip)


SELF = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
INPUT = inspect.Parameter("input_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="int | BRIMsConfig")
BRIMs.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [SELF, INPUT, *option_parameters(inspect.Parameter.POSITIONAL_OR_KEYWORD, ())])
BRIMs.__init__.__doc__ = f"""Build the network of a :class:`BRIMsConfig`, or of its fields given here.

Args:
    input_size: features of the input at each step, or a whole :class:`BRIMsConfig` (then pass
        nothing else).
{describe_options(())}

``nn.LSTM``'s ``hidden_size`` and ``num_layers`` are refused with the equivalent
(``hidden_sizes=(H,) * num_layers`` with ``num_modules`` and ``top_k`` per layer).
"""
RIMs.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [SELF, INPUT, *(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value, annotation="int")
                    for name, value in RIMS_SIZES.items()),
     *option_parameters(inspect.Parameter.KEYWORD_ONLY, PER_LAYER)])
RIMs.__init__.__doc__ = f"""Build one layer of ``num_modules`` modules of ``hidden_size // num_modules`` units,
``top_k`` of them active per step, without top-down; or from a one-layer config without top-down.

Args:
    input_size: features of the input at each step, or a one-layer :class:`BRIMsConfig`.
    hidden_size: units of the layer. Default ``600``.
    num_modules: modules of the layer. Default ``6``.
    top_k: modules that update per example and step. Default ``4``.
{describe_options(PER_LAYER)}
"""


# ---- argument checks --------------------------------------------------------------------------------


def refuse_unknown_options(owner: str, unknown: Mapping[str, Any]) -> None:
    """A ``TypeError`` for keywords that are no option; ``nn.LSTM``'s sizes get their equivalent."""
    if not unknown:
        return
    if "hidden_size" in unknown or "num_layers" in unknown:
        hidden = unknown.get("hidden_size", "H")
        layers = unknown.get("num_layers", 1 if "hidden_size" in unknown else "num_layers")
        concrete = isinstance(layers, int) and not isinstance(layers, bool) and layers > 0
        count = layers if concrete else "num_layers"
        if concrete and isinstance(hidden, int) and not isinstance(hidden, bool):
            sizes = f"hidden_sizes={(hidden,) * layers}"
        else:
            sizes = f"hidden_sizes=({hidden},) * {count}"
        given = ", ".join(f"{name}={unknown[name]!r}" for name in ("hidden_size", "num_layers") if name in unknown)
        one_layer = owner == "BRIMs" and (count == 1 or "num_layers" not in unknown)
        raise TypeError(
            f"{owner} takes one hidden size per layer, not nn.LSTM's hidden_size and num_layers (got {given}): "
            f"pass {sizes}, num_modules=(n,) * {count} and top_k=(k,) * {count} (n modules per layer, k of them "
            "active; each hidden size divisible by its n, 1 <= k <= n)"
            + ("; brims.RIMs(input_size, hidden_size=H, num_modules=n, top_k=k) is one layer without top-down"
               if one_layer else "")
        )
    names = sorted(unknown)
    hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, CONFIG_FIELDS, 1)) else name
             for name in names]
    raise TypeError(
        f"{owner}() got unexpected keyword argument{'s' if len(names) > 1 else ''} {', '.join(hints)}; "
        f"the options are BRIMsConfig's fields: {', '.join(CONFIG_FIELDS)}"
    )


def refuse_tensor_pair(state: Any) -> None:
    """A ``TypeError`` that describes (not prints) an ``nn.LSTM``-style ``(h, c)`` of tensors given as the state."""
    if not isinstance(state, tuple) or not any(isinstance(part, Tensor) for part in state):
        return
    described = ", ".join(
        str(tuple(part.shape)) if isinstance(part, Tensor) else type(part).__name__ for part in state
    )
    noun = "tensors" if all(isinstance(part, Tensor) for part in state) else "items"
    raise TypeError(
        f"state: got a {type(state).__name__} of {len(state)} {noun} with shapes {described}; BRIMs takes a "
        "BRIMsState, one (B, hidden_sizes[l]) tensor per layer in h and c (model.init_state(batch_size), or the "
        "state a call returned), not nn.LSTM's (h, c) pair of tensors"
    )
