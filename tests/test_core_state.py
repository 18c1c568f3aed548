"""The recurrent core owns its carried state, whatever its kind (issue 20).

``RecurrentCore`` gives every kind the same state operations: zeros to start from, rows zeroed
at episode starts, the graph cut for truncated back-propagation, a move to a device, a flat
``(B, S)`` form for rollout storage and a plain dict of tensors for checkpoints. The tasks call
those and never look inside a state: the last tests read the source to keep it so.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import brims_experiments
from brims_experiments.tasks import cores, language
from brims_experiments.tasks.cores import CORE_KINDS, CoreConfig, RecurrentCore

TINY = {"hidden_sizes": [8, 6], "num_modules": [2, 1], "top_k": [1, 1], "input_heads": 1, "input_key_size": 4,
        "comm_heads": 1, "comm_key_size": 4, "comm_value_size": 4, "attention_dropout": 0.0}
INPUT, BATCH, STEPS = 5, 4, 3
ROWS = torch.tensor([True, False, False, True])  # (B,): the rows to reset
# Every kind that carries a state (the memoryless core carries zeros it never reads: its own test
# below), and a GRU-cell BRIMs, whose c mirrors h.
REMEMBERING = [kind for kind in CORE_KINDS if kind != "memoryless"]
VARIANTS = [*REMEMBERING, "brims-gru"]


def make_core(kind: str) -> RecurrentCore:
    torch.manual_seed(0)
    options = dict(TINY)
    if kind == "rims":
        options.update(hidden_sizes=[8], num_modules=[2], top_k=[1])
    if kind in ("lstm", "memoryless"):
        options.update(hidden_sizes=[8, 8])  # the LSTM's layers are of one size, and so are the memoryless ones
    if kind == "brims-gru":
        kind, options["cell"] = "brims", "gru"
    return RecurrentCore(CoreConfig(kind=kind, brims=options), INPUT).double().eval()


def inputs(seed: int = 1, steps: int = STEPS) -> torch.Tensor:
    return torch.randn(steps, BATCH, INPUT, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tensors(core: RecurrentCore, state) -> list[torch.Tensor]:
    """The state's tensors, one ``(B, H_l)`` per layer, h then c (read through the flat form)."""
    return list(core.flatten_state(state).split(list(core.config.hidden_sizes) * 2, dim=-1))


def carried(core: RecurrentCore, grad: bool = False):
    """A non-zero state after a few steps (in the graph of ``x`` when ``grad``)."""
    x = inputs().requires_grad_(grad)
    _, state, _ = core(x)
    return state


@pytest.mark.parametrize("kind", VARIANTS)
def test_initial_state_is_zeros_and_what_forward_starts_from(kind):
    core = make_core(kind)
    state = core.initial_state(BATCH)
    sizes = core.config.hidden_sizes
    assert core.state_size == 2 * sum(sizes)
    flat = core.flatten_state(state)
    assert flat.shape == (BATCH, core.state_size) and flat.dtype == torch.float64
    assert torch.equal(flat, torch.zeros_like(flat))
    if kind == "lstm":
        h, c = state
        assert h.shape == c.shape == (len(sizes), BATCH, sizes[0])
    else:
        assert [tuple(t.shape) for t in state.h] == [(BATCH, size) for size in sizes]
        assert [tuple(t.shape) for t in state.c] == [(BATCH, size) for size in sizes]
    assert core.flatten_state(core.initial_state(2, "cpu", torch.float32)).dtype == torch.float32
    x = inputs()
    implicit, implicit_state, _ = core(x)
    explicit, explicit_state, _ = core(x, state)
    assert torch.equal(implicit, explicit)
    assert torch.equal(core.flatten_state(implicit_state), core.flatten_state(explicit_state))


@pytest.mark.parametrize("kind", VARIANTS)
def test_reset_rows_zeroes_exactly_the_masked_rows(kind):
    core = make_core(kind)
    state = carried(core)
    before = [t.clone() for t in tensors(core, state)]
    assert all((t[ROWS] != 0).any() for t in before)  # something to reset
    reset = core.reset_rows(state, ROWS)
    for old, new in zip(before, tensors(core, reset)):
        assert torch.equal(new[ROWS], torch.zeros_like(new[ROWS]))
        assert torch.equal(new[~ROWS], old[~ROWS])  # bit-identical
    assert all(torch.equal(a, b) for a, b in zip(tensors(core, state), before))  # the input state is untouched
    unchanged = core.reset_rows(state, torch.zeros(BATCH, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(tensors(core, unchanged), before))


@pytest.mark.parametrize("kind", REMEMBERING)
def test_reset_rows_refuses_a_mask_that_is_not_bool_per_row(kind):
    core = make_core(kind)
    state = core.initial_state(BATCH)
    with pytest.raises(ValueError, match=r"rows must be a bool tensor of shape \(B,\)=\(4,\), got shape \(3,\)"):
        core.reset_rows(state, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows must be a bool tensor.*got dtype torch.int64"):
        core.reset_rows(state, torch.zeros(BATCH, dtype=torch.long))


@pytest.mark.parametrize("kind", VARIANTS)
def test_a_forward_after_reset_equals_one_from_the_initial_state(kind):
    core = make_core(kind)
    state = core.reset_rows(carried(core), ROWS)
    x = inputs(seed=2)
    after_reset, final, _ = core(x, state)
    fresh, fresh_final, _ = core(x, core.initial_state(BATCH))
    torch.testing.assert_close(after_reset[:, ROWS], fresh[:, ROWS], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(core.flatten_state(final)[ROWS], core.flatten_state(fresh_final)[ROWS],
                               rtol=1e-12, atol=1e-12)
    assert not torch.allclose(after_reset[:, ~ROWS], fresh[:, ~ROWS])  # the kept rows remember


@pytest.mark.parametrize("kind", VARIANTS)
def test_detach_state_cuts_the_graph_and_keeps_the_values(kind):
    core = make_core(kind)
    state = carried(core, grad=True)
    assert all(t.requires_grad and t.grad_fn is not None for t in tensors(core, state))
    detached = core.detach_state(state)
    flat = [t for t in (detached.h + detached.c if kind != "lstm" else detached)]
    assert all(not t.requires_grad and t.grad_fn is None for t in flat)
    assert all(torch.equal(a, b) for a, b in zip(tensors(core, detached), tensors(core, state)))
    output, _, _ = core(inputs(seed=3), detached)
    output.sum().backward()  # only through this call's steps
    assert core.detach_state(None) is None


@pytest.mark.parametrize("kind", VARIANTS)
def test_state_to_moves_every_tensor(kind):
    core = make_core(kind)
    state = carried(core)
    moved = core.state_to(state, torch.device("meta"))
    flat = [t for t in (moved.h + moved.c if kind != "lstm" else moved)]
    assert len(flat) == (2 if kind == "lstm" else 2 * len(core.config.hidden_sizes))
    assert all(t.device.type == "meta" for t in flat)
    same = core.state_to(state, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(tensors(core, same), tensors(core, state)))
    assert core.state_to(None, "cpu") is None


@pytest.mark.parametrize("kind", VARIANTS)
def test_flat_state_round_trip(kind):
    core = make_core(kind)
    state = carried(core)
    flat = core.flatten_state(state)
    assert flat.shape == (BATCH, core.state_size)
    back = core.unflatten_state(flat)
    assert torch.equal(core.flatten_state(back), flat)
    x = inputs(seed=4)
    assert torch.equal(core(x, back)[0], core(x, state)[0])
    # The layout rollouts store: h of every layer bottom to top, then c.
    sizes = core.config.hidden_sizes
    h = state.h if kind != "lstm" else state[0].unbind(0)
    assert torch.equal(flat[:, : sizes[0]], h[0]) and torch.equal(flat[:, sum(sizes) - sizes[-1] : sum(sizes)], h[-1])


@pytest.mark.parametrize("kind", VARIANTS)
def test_plain_state_round_trips_through_a_checkpoint(kind, tmp_path):
    core = make_core(kind)
    state = carried(core)
    plain = core.state_to_plain(state)
    # The stored format, unchanged (older checkpoints stay readable): per layer for the modular
    # kinds, nn.LSTM's (L, B, H) tensors for lstm.
    assert set(plain) == {"kind", "h", "c"}
    assert plain["kind"] == ("lstm" if kind == "lstm" else "brims")
    assert len(plain["h"]) == len(plain["c"]) == (1 if kind == "lstm" else len(core.config.hidden_sizes))
    torch.save({"train_state": plain}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["train_state"]
    back = core.state_from_plain(loaded)
    assert torch.equal(core.flatten_state(back), core.flatten_state(state))
    x = inputs(seed=5)
    assert torch.equal(core(x, back)[0], core(x, state)[0])
    assert core.state_to_plain(None) is None and core.state_from_plain(None) is None
    # The module functions the language task re-exports do the same without the core.
    assert torch.equal(core.flatten_state(language.state_from_plain(language.state_to_plain(state))),
                       core.flatten_state(state))


def test_a_plain_state_of_the_other_family_is_refused():
    lstm, brims = make_core("lstm"), make_core("brims")
    with pytest.raises(ValueError, match="a brims state cannot continue an lstm core"):
        lstm.state_from_plain(brims.state_to_plain(brims.initial_state(2)))
    with pytest.raises(ValueError, match="a lstm state cannot continue a brims core"):
        brims.state_from_plain(lstm.state_to_plain(lstm.initial_state(2)))
    with pytest.raises(ValueError, match="unknown state kind 'gru'"):
        cores.state_from_plain({"kind": "gru", "h": [], "c": []})


def test_a_checkpoint_written_before_the_refactor_reads():
    """The plain states the language task stored before the core owned its state."""
    h, c = [torch.randn(BATCH, 8), torch.randn(BATCH, 6)], [torch.randn(BATCH, 8), torch.randn(BATCH, 6)]
    modular = language.state_from_plain({"kind": "brims", "h": h, "c": c})
    assert [t is u for t, u in zip(modular.h + modular.c, h + c)] == [True] * 4
    lstm_h, lstm_c = torch.randn(2, BATCH, 8), torch.randn(2, BATCH, 8)
    assert [t is u for t, u in zip(language.state_from_plain({"kind": "lstm", "h": [lstm_h], "c": [lstm_c]}),
                                   (lstm_h, lstm_c))] == [True, True]


# ---- only cores.py looks inside a state ---------------------------------------------------------

SOURCE = Path(brims_experiments.__file__).parent
OWNER = SOURCE / "tasks" / "cores.py"
# A name that holds a state (not a state_dict, an RNG state or a checkpoint's state dict).
STATE_NAME = re.compile(r"(?<!rng_)state(?!_dict)", re.IGNORECASE)
MAPPINGS = {"dict", "Mapping"}  # a core's state is never one: checking for one reads a checkpoint


def state_violations(path: Path, source: str) -> list[str]:
    """Where ``source`` looks inside a core's state instead of asking the core."""
    found = []
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(SOURCE.parent)}:{getattr(node, 'lineno', '?')}"
        if (isinstance(node, ast.Name) and node.id == "BRIMsState"
                or isinstance(node, ast.Attribute) and node.attr == "BRIMsState"
                or isinstance(node, ast.alias) and node.name.rpartition(".")[2] == "BRIMsState"):
            found.append(f"{where}: names BRIMsState")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "isinstance" and len(node.args) == 2:
                subject, types = (ast.unparse(arg) for arg in node.args)
                if STATE_NAME.search(subject) and types not in MAPPINGS:
                    found.append(f"{where}: isinstance({subject}, {types}) branches on a state's type")
            if node.func.id == "BRIMsDiagnostics":
                found.append(f"{where}: builds BRIMsDiagnostics (join parts with brims.cell.join_diagnostics)")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            names |= {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
            names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            if "is_modular" in names and any(STATE_NAME.search(name) for name in names):
                found.append(f"{where}: {node.name}() handles a state by the core's kind (is_modular)")
    return found


def test_only_the_core_looks_inside_a_state():
    """Outside tasks/cores.py nothing names BRIMsState, tests a state's type or switches on the
    kind where it handles a state: the tasks ask RecurrentCore."""
    files = sorted(p for p in SOURCE.rglob("*.py") if p != OWNER)
    assert len(files) > 20 and SOURCE / "rl" / "agent.py" in files
    found = [line for path in files for line in state_violations(path, path.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("snippet, message", [
    ("from brims.cell import BRIMsState\n", "names BRIMsState"),
    ("import brims\ndef f(s):\n    return brims.BRIMsState(s, s)\n", "names BRIMsState"),
    ("def detach(state):\n    if isinstance(state, tuple):\n        return state\n", "branches on a state's type"),
    ("def f(self):\n    return isinstance(self.states[True], list)\n", "branches on a state's type"),
    ("def flat(self, core_state):\n    if self.core.is_modular:\n        return core_state\n",
     "handles a state by the core's kind"),
    ("def join(parts):\n    return BRIMsDiagnostics(*parts)\n", "builds BRIMsDiagnostics"),
])
def test_the_source_check_catches_each_way_of_looking_inside(snippet, message):
    assert any(message in line for line in state_violations(SOURCE / "example.py", snippet))


@pytest.mark.parametrize("snippet", [
    "def best(checkpoint):\n    return [s for s in checkpoint.values() if isinstance(s, dict)]\n",
    "def f(state):\n    return isinstance(state, dict)\n",  # a Lightning callback's state
    "def plot(model):\n    if not model.core.is_modular:\n        return None\n",
    "def f(model):\n    torch.set_rng_state(model.rng_state)\n    return model.core.is_modular\n",
])
def test_the_source_check_lets_other_code_be(snippet):
    assert state_violations(SOURCE / "example.py", snippet) == []


def test_the_memoryless_core_reads_each_step_alone():
    """Its output at step t is a function of x_t only: the same input at a step gives the same output
    whatever came before it, and whatever state is passed in."""
    torch.manual_seed(0)
    core = RecurrentCore(CoreConfig(kind="memoryless", brims={"hidden_sizes": (6, 6)}), input_size=3).double()
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    other = torch.cat([torch.randn(3, 4, 3, dtype=torch.float64), x[3:]])  # another past, the same last steps
    out, state, _ = core(x)
    out_other, _, _ = core(other, core.reset_rows(core.initial_state(4), torch.ones(4, dtype=torch.bool)))
    assert torch.equal(out[3:], out_other[3:]) and not torch.equal(out[:3], out_other[:3])
    assert all(not t.any() for t in core._parts(state))  # the state it carries is zeros
    lstm = RecurrentCore(CoreConfig(kind="lstm", brims={"hidden_sizes": (6, 6)}), input_size=3).double()
    lstm_out, _, _ = lstm(x)
    lstm_other, _, _ = lstm(other)
    assert not torch.equal(lstm_out[3:], lstm_other[3:])  # the property is not trivial: the LSTM remembers
