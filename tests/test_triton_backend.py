"""The Triton backend (``BRIMsConfig(backend="triton")``) computes what the torch backend computes.

Outputs, final state, module choices, attention, and the gradient of every parameter, of the input
and of the initial state, over the model's switches, in float64, in training mode with dropout
(both backends draw the same keep masks under one seed) and in eval mode. Without a GPU the
kernels run in Triton's interpreter (conftest.py sets ``TRITON_INTERPRET=1``): slow, so the
sequences are short. With one, the same comparisons run on it (``DEVICE``).

The kernels' dots follow torch's float32 matmul setting (TF32 where torch allows it); the autouse
fixture ``_ieee_dots`` pins it to IEEE, so that float32 results compare to float32 rounding (float64
dots are IEEE always).

Every field of ``BRIMsConfig`` is classified in ``FUSED_OPTIONS``: varied by a named equality test
here, or refused with ``backend="triton"``; a new field fails
``test_every_config_field_is_implemented_or_refused`` (fast: it runs no kernel) until it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from support import ALL_COMBOS, CELLS, build, make_config, random_input, random_state

from brims import BRIMs, BRIMsConfig, BRIMsState
from brims.backends.fused import dot_precision, torch_uses_tf32

TOL = {"rtol": 0, "atol": 1e-12}
STEPS, BATCH = 2, 3
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the interpreter runs CPU tensors only


def set_float32_matmul_tf32(allowed: bool) -> None:
    """Set whether torch runs float32 CUDA matmuls in TF32."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the newer spelling, which allow_tf32 must not mix with
        matmul.fp32_precision = "tf32" if allowed else "ieee"
    else:
        matmul.allow_tf32 = allowed


@pytest.fixture(autouse=True)
def _ieee_dots():
    """IEEE float32 dots in every test here, whatever torch's setting was (restored after)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision if hasattr(matmul, "fp32_precision") else matmul.allow_tf32
    set_float32_matmul_tf32(False)
    yield
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = before
    else:
        matmul.allow_tf32 = before


def twins(config: BRIMsConfig, train: bool, dtype: torch.dtype = torch.float64) -> tuple[BRIMs, BRIMs]:
    """The torch-backend model and a Triton-backend model with the same weights."""
    reference = build(config, train=train, dtype=dtype).to(DEVICE)
    fused = build(dataclasses.replace(config, backend="triton"), train=train, dtype=dtype).to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def run(model: BRIMs, x: torch.Tensor, state: BRIMsState | None) -> dict[str, torch.Tensor]:
    """One forward and backward from fresh leaves; everything the comparison reads, by name."""
    torch.manual_seed(5)  # the dropout masks
    x = x.detach().to(DEVICE).requires_grad_()
    leaves = {"x": x}
    if state is not None:
        h = tuple(t.detach().to(DEVICE).requires_grad_() for t in state.h)
        c = h if model.config.cell == "gru" else tuple(t.detach().to(DEVICE).requires_grad_() for t in state.c)
        leaves.update({f"h0[{i}]": t for i, t in enumerate(h)}, **{f"c0[{i}]": t for i, t in enumerate(c)})
        state = BRIMsState(h, c)
    output, final, diagnostics = model(x, state, return_diagnostics=True)
    # Every output and both parts of the final state weigh differently in the loss.
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)
    loss = (output * weights).sum() + sum((0.3 * t).sum() for t in final.h) + sum(t.square().sum() for t in final.c)
    loss.backward()
    got = {"output": output}
    got.update({f"h[{i}]": t for i, t in enumerate(final.h)}, **{f"c[{i}]": t for i, t in enumerate(final.c)})
    got.update({f"active[{i}]": t for i, t in enumerate(diagnostics.active)})
    got.update({f"attention[{i}]": t for i, t in enumerate(diagnostics.attention)})
    got.update({f"grad {name}": leaf.grad for name, leaf in leaves.items()})
    got.update({f"grad {name}": p.grad for name, p in model.named_parameters()})
    return got


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], tol=TOL) -> None:
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert value is not None and got[name] is not None, name
        if value.dtype == torch.bool:
            assert torch.equal(got[name], value), name
        else:
            torch.testing.assert_close(got[name], value, **tol, msg=lambda m, name=name: f"{name}: {m}")


# Every combination of cell x layers (1-3: their sizes, modules and top_k differ) x top_down x communication.
COMBO_CONFIGS = [pytest.param(make_config(*combo.values[0]), id=combo.id) for combo in ALL_COMBOS]


@pytest.mark.parametrize("config", COMBO_CONFIGS)
def test_triton_matches_torch_in_training(config):
    reference, fused = twins(config, train=True)
    x, state = random_input(config, STEPS, BATCH), random_state(reference, BATCH)
    expected, got = run(reference, x, state), run(fused, x, state)
    assert_same(expected, got)
    # Dropout did drop something: the same model in eval mode gives other outputs.
    assert not torch.allclose(run(reference.eval(), x, state)["output"], expected["output"])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("communication", [True, False])
def test_triton_matches_torch_in_eval(cell, communication):
    config = make_config(cell, 2, top_down=True, communication=communication)
    reference, fused = twins(config, train=False)
    x, state = random_input(config, STEPS, BATCH), random_state(reference, BATCH)
    assert_same(run(reference, x, state), run(fused, x, state))


# make_config's two layers with one option changed each: the options ALL_COMBOS keeps fixed, and every
# module active (the kernels' TOP_K == N branch).
OPTION_CONFIGS = [
    pytest.param(dataclasses.replace(make_config("lstm", 2), **{name: value}), id=f"{name}={value}")
    for name, value in [
        ("input_size", 7), ("top_k", (4, 2)), ("input_heads", 1), ("input_key_size", 6), ("input_value_factor", 4),
        ("comm_heads", 1), ("comm_key_size", 2), ("comm_value_size", 4), ("attention_dropout", 0.5),
        ("batch_first", True),
    ]
]


@pytest.mark.parametrize("config", OPTION_CONFIGS)
def test_triton_matches_torch_with_option(config):
    reference, fused = twins(config, train=True)
    x, state = random_input(config, STEPS, BATCH), random_state(reference, BATCH)
    if config.batch_first:
        x = x.transpose(0, 1)  # (B, T, F)
    assert_same(run(reference, x, state), run(fused, x, state))


@dataclasses.dataclass(frozen=True)
class Refused:
    """An option value the fused backend does not implement: ``BRIMsConfig`` refuses it with ``backend="triton"``."""

    value: Any


# Each BRIMsConfig field: the parametrised equality test whose configs vary it, or Refused. The kernels
# (brims/backends/triton_kernels.py) implement every option but attended_norm; a new field goes here.
FUSED_OPTIONS: dict[str, str | Refused] = {
    "input_size": "test_triton_matches_torch_with_option",
    "hidden_sizes": "test_triton_matches_torch_in_training",
    "num_modules": "test_triton_matches_torch_in_training",
    "top_k": "test_triton_matches_torch_with_option",
    "cell": "test_triton_matches_torch_in_training",
    "top_down": "test_triton_matches_torch_in_training",
    "communication": "test_triton_matches_torch_in_training",
    "input_heads": "test_triton_matches_torch_with_option",
    "input_key_size": "test_triton_matches_torch_with_option",
    "input_value_factor": "test_triton_matches_torch_with_option",
    "comm_heads": "test_triton_matches_torch_with_option",
    "comm_key_size": "test_triton_matches_torch_with_option",
    "comm_value_size": "test_triton_matches_torch_with_option",
    "attention_dropout": "test_triton_matches_torch_with_option",
    "attended_norm": Refused(True),
    "batch_first": "test_triton_matches_torch_with_option",
    "backend": "test_triton_matches_torch_in_training",  # the switch: twins() builds each config with both
}


def compared_configs(test: Any) -> list[BRIMsConfig]:
    """The configs an equality test compares: its ``config`` parametrisation, each with both backends (``twins``)."""
    configs = [value.values[0] if hasattr(value, "values") else value
               for mark in getattr(test, "pytestmark", []) if mark.name == "parametrize" and mark.args[0] == "config"
               for value in mark.args[1]]
    assert configs, f"{test.__name__} is not parametrised over config"
    return [twin for config in configs for twin in (config, dataclasses.replace(config, backend="triton"))]


def test_every_config_field_is_implemented_or_refused():
    fields = [field.name for field in dataclasses.fields(BRIMsConfig)]
    assert set(FUSED_OPTIONS) == set(fields), (
        f"classify every BRIMsConfig field in FUSED_OPTIONS: missing {sorted(set(fields) - set(FUSED_OPTIONS))}, "
        f"stale {sorted(set(FUSED_OPTIONS) - set(fields))}")
    for name, how in FUSED_OPTIONS.items():
        if isinstance(how, Refused):
            dataclasses.replace(make_config(), **{name: how.value})  # the torch backend takes it
            with pytest.raises(ValueError, match=name):
                dataclasses.replace(make_config(backend="triton"), **{name: how.value})
        else:
            values = {repr(getattr(config, name)) for config in compared_configs(globals()[how])}
            assert len(values) >= 2, f"{how} does not vary {name} (always {values})"


def test_triton_batch_spanning_programs_matches_torch():
    """20 rows: two programs of 16 rows, the second one partly masked."""
    config = make_config("lstm", 2, top_down=True, communication=True)
    reference, fused = twins(config, train=True)
    x, state = random_input(config, STEPS, 20), random_state(reference, 20)
    assert_same(run(reference, x, state), run(fused, x, state))


@pytest.mark.parametrize("cell", CELLS)
def test_triton_from_a_zero_state_breaks_ties_like_torch(cell):
    """A zero state gives every module the same null score at the first step: ties go to the lower index."""
    config = make_config(cell, 2, top_down=True, communication=True)
    reference, fused = twins(config, train=False)
    x = random_input(config, STEPS, BATCH)
    expected, got = run(reference, x, None), run(fused, x, None)
    assert expected["active[0]"][0].sum(-1).eq(config.top_k[0]).all()
    assert_same(expected, got)


def test_triton_float32_matches_within_float32_tolerance():
    config = make_config("lstm", 2, top_down=True, communication=True)
    reference, fused = twins(config, train=True, dtype=torch.float32)
    x = random_input(config, STEPS, BATCH, dtype=torch.float32)
    assert_same(run(reference, x, random_state(reference, BATCH)), run(fused, x, random_state(fused, BATCH)),
                tol={"rtol": 1e-5, "atol": 1e-6})


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    config = make_config("lstm", 1)
    fused = build(dataclasses.replace(config, backend="triton"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="need a CUDA GPU, or Triton's interpreter"):
        fused(random_input(config, 1, 2))


def test_compile_step_refuses_the_triton_backend():
    model = BRIMs(make_config("lstm", 1, backend="triton"))
    with pytest.raises(ValueError, match="compile_step\\(\\) compiles the torch backend"):
        model.compile_step()


def test_backend_is_validated():
    with pytest.raises(ValueError, match="backend must be one of \\('torch', 'triton'\\), got 'cuda'"):
        make_config("lstm", 1, backend="cuda")


def test_triton_matches_torch_with_sizes_past_one_tile():
    """Modules of 20 units, keys of 20 and values of 40 pad to 32, 32 and 64 lanes (the tiny configs
    above fit in one 16-lane tile)."""
    config = make_config("lstm", 1, hidden_sizes=(60,), num_modules=(3,), top_k=(2,), input_key_size=20,
                         comm_key_size=20, comm_value_size=24)
    reference, fused = twins(config, train=True)
    x, state = random_input(config, STEPS, BATCH), random_state(reference, BATCH)
    assert_same(run(reference, x, state), run(fused, x, state))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
def test_triton_on_cuda_matches_torch_on_cuda(cell):
    """The compiled kernels on a GPU, at the released configuration's sizes (300 units, 6 and 3
    modules), float32, training mode with dropout, 70 rows (five programs)."""
    config = BRIMsConfig(300, cell=cell)
    reference, fused = twins(config, train=True, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 70, 300, generator=generator)
    state = BRIMsState(*(tuple(0.5 * torch.randn(70, 300, generator=generator) for _ in range(2)) for _ in range(2)))
    if cell == "gru":
        state = BRIMsState(state.h, state.h)
    assert_same(run(reference, x, state), run(fused, x, state), tol={"rtol": 1e-4, "atol": 2e-5})


def test_dot_precision_follows_torch():
    """TF32 dots for a float32 step exactly where torch would use tensor cores for its matmuls: TF32
    allowed, or autocast on the state's device; IEEE otherwise and always in float64."""
    h32, h64 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)
    assert dot_precision(h32) == "ieee" and dot_precision(h64) == "ieee"  # the fixture's IEEE
    with torch.autocast(h32.device.type, dtype=torch.bfloat16):
        assert dot_precision(h32) == "tf32" and dot_precision(h64) == "ieee"
    set_float32_matmul_tf32(True)
    assert torch_uses_tf32()
    assert dot_precision(h32) == "tf32" and dot_precision(h64) == "ieee"


def test_triton_refuses_a_bfloat16_state():
    """A bfloat16 model's kernels would not compile (their float32 accumulators); mixed precision is autocast."""
    config = make_config("lstm", 1, backend="triton")
    model = build(config, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="computes in float32 or float64, got a torch.bfloat16 state"):
        model(random_input(config, 1, 2, dtype=torch.bfloat16))


def test_triton_under_autocast_keeps_a_float32_state_and_trains():
    """Mixed precision: the slot projections run in bfloat16 under autocast; the kernels take them in
    the state's float32 (with TF32 dots, which the interpreter computes in float32), and the gradients
    reach every parameter."""
    config = make_config("lstm", 2, top_down=True, communication=True)
    fused = build(dataclasses.replace(config, backend="triton"), dtype=torch.float32, train=True).to(DEVICE)
    x = random_input(config, STEPS, BATCH, dtype=torch.float32).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        output, state = fused(x)
    assert output.dtype == torch.float32 and all(t.dtype == torch.float32 for t in state.h + state.c)
    output.square().sum().backward()
    for name, parameter in fused.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
