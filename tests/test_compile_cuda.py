"""torch.compile and CUDA (docs/design.md, invariants). Compile tests are few and tiny: a cold inductor compile on a
small CPU takes tens of seconds. CUDA tests skip (not fail) without a GPU."""

from __future__ import annotations

import pytest
import torch
from support import CELLS, build, make_config, random_input, random_state

from brims import BRIMs, BRIMsState

TOL = {"rtol": 0, "atol": 1e-10}
# torch.compile's own imports warn about torch.jit deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def fresh_dynamo():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


# ---- torch.compile ---------------------------------------------------------------------------------


def test_torch_compile_whole_model_matches_eager(fresh_dynamo):
    config = make_config("lstm", 1, communication=True)
    model = build(config)
    x = random_input(config, 3, 2)
    state = random_state(model, 2)
    with torch.no_grad():
        expected, expected_state, expected_diag = model(x, state, return_diagnostics=True)
        output, final, diagnostics = torch.compile(model)(x, state, return_diagnostics=True)
    torch.testing.assert_close(output, expected, **TOL)
    for a, b in zip(final.h + final.c, expected_state.h + expected_state.c):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(diagnostics.active[0], expected_diag.active[0])


def test_compile_step_matches_eager(fresh_dynamo):
    config = make_config("gru", 2, top_down=True, communication=True)
    model = build(config)
    x = random_input(config, 3, 2)
    state = random_state(model, 2)
    with torch.no_grad():
        expected, expected_state = model(x, state)
        assert model.compile_step() is model
        output, final = model(x, state)
        # A second call with a continued state reuses the compiled step and continues exactly.
        continued, _ = model(x, final)
        expected_continued, _ = build(config)(x, expected_state)
    torch.testing.assert_close(output, expected, **TOL)
    for a, b in zip(final.h + final.c, expected_state.h + expected_state.c):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(continued, expected_continued, **TOL)


def test_compile_step_gradients_match_eager(fresh_dynamo):
    """Training through the compiled chunks (forward and backward graphs, of 2 steps and of the
    last 1) gives eager's gradients."""
    config = make_config("lstm", 2, top_down=True, communication=True)
    eager, compiled = build(config), build(config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_step(steps_per_call=2)
    assert compiled.compiled.steps_per_call == 2
    x = random_input(config, 3, 2)
    for model in (eager, compiled):
        output, _ = model(x)
        output.square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("steps_per_call", [1, 4, 5])  # 4: chunks of 4 and 2; 5: of 5 and 1
def test_steps_per_call_changes_no_number(fresh_dynamo, cell, steps_per_call):
    """The compiled loop's chunks are an execution detail: through dynamo (its eager backend, so
    that no inductor compile is paid; the ops and their random draws are the eager ones) outputs,
    state, diagnostics and gradients equal the plain loop's, in train mode (attention dropout on),
    up to the rounding of its input projected for the whole sequence (brims/backends/projected.py)."""
    config = make_config(cell, 3, top_down=True, communication=True)
    reference, model = build(config, train=True), build(config, train=True)
    model.compile_step(steps_per_call=steps_per_call, backend="eager")
    results = []
    for run in (reference, model):
        x = random_input(config, 6, 3).requires_grad_()
        torch.manual_seed(5)  # the same dropout masks
        output, final, diagnostics = run(x, random_state(run, 3), return_diagnostics=True)
        loss = output.square().sum() + sum(t.sum() for t in final.h + final.c + diagnostics.attention)
        grads = torch.autograd.grad(loss, [x, *run.parameters()])
        results.append((output, final, diagnostics, grads))
    (output, final, diagnostics, grads), (ref_output, ref_final, ref_diagnostics, ref_grads) = results
    torch.testing.assert_close(output, ref_output, rtol=1e-12, atol=1e-12)  # the input projected at once: rounding
    for a, b in zip(final.h + final.c, ref_final.h + ref_final.c):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(diagnostics.active, ref_diagnostics.active):
        assert torch.equal(a, b)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_compile_step_training_compiles_each_chunk_once(fresh_dynamo, cell):
    """The first chunk's state comes from outside (zeros that need no grad, or a given state that
    does); the later chunks get the previous chunk's. A compiled chunk is specialised on its
    inputs' requires_grad and on which of them are the same tensor, so any difference would
    compile it a second time (minutes, cold). The eager backend runs dynamo's guards without
    inductor's compile time."""
    config = make_config(cell, 3, top_down=True, communication=True)
    model = build(config).compile_step(steps_per_call=2, backend="eager")
    x = random_input(config, 6, 2).requires_grad_()
    state = random_state(model, 2)
    state = BRIMsState(tuple(h.requires_grad_() for h in state.h), tuple(c.requires_grad_() for c in state.c))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for start in (state, None, state):
            output, final = model(x, start)
            (output.square().sum() + sum(h.sum() for h in final.h)).backward()


@pytest.mark.parametrize(
    "options",
    [{}, {"mode": "max-autotune-no-cudagraphs"}, {"options": {"cpp_wrapper": False}}, {"backend": "eager"}],
    ids=["default", "mode", "options", "eager-backend"],
)
def test_compile_step_accepts_torch_compile_options(fresh_dynamo, options):
    """torch.compile refuses `mode` together with `options`: compile_step adds its per-device
    defaults to the caller's `options` only, and passes `mode` and non-inductor backends through."""
    config = make_config("gru", 1, communication=False)
    model = build(config)
    assert model.compile_step(**options) is model
    if options.get("backend") == "eager":  # cheap to run: no inductor compilation
        x = random_input(config, 2, 2)
        with torch.no_grad():
            torch.testing.assert_close(model(x)[0], build(config)(x)[0], **TOL)


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs dynamo hands it and runs them as they are (no
    inductor compile): how many times a chunk compiled, through public API only."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return graph.forward


def tiny(**options) -> BRIMs:
    torch.manual_seed(0)
    return BRIMs(8, hidden_sizes=[16, 16], num_modules=[4, 2], top_k=[2, 1], input_heads=2, input_key_size=4,
                 comm_heads=2, comm_key_size=4, comm_value_size=4, **options)


def test_compile_step_graphs_are_bounded_over_batch_sizes_lengths_and_modes(fresh_dynamo):
    """Lengths 8, 10, 9, 13 (leftovers of 0, 2, 1 and 1 steps) compile one 4-step and one 1-step graph; batch
    sizes 8, 16, 12, 33 at most one more each (the first batch size equals the input size, and they share a
    symbol until another batch size comes); eval mode the same again. Four variants, at most 8 graphs
    (measured: 6). The loop before this compiled a chunk per distinct leftover (3 graphs for the lengths
    alone) and a graph per change of batch size, and past torch's limit of 8 per function, which every
    model shared, ran eagerly without a word."""
    backend = CountingBackend()
    model = tiny().compile_step(steps_per_call=4, backend=backend)
    generator = torch.Generator().manual_seed(0)

    def run(batches: tuple[int, ...]) -> None:
        for batch in batches:
            for steps in (8, 10, 9, 13):
                with torch.set_grad_enabled(model.training):
                    output, _ = model(torch.randn(steps, batch, 8, generator=generator))
                if model.training:
                    output.square().sum().backward()
                assert output.shape == (steps, batch, 16)

    for training in (True, False):
        model.train(training)
        before = backend.graphs
        run((8,))
        assert backend.graphs - before == 2  # the lengths: a 4-step and a 1-step graph
        run((16, 12, 33))
        assert backend.graphs - before <= 4, backend.graphs - before  # the batch sizes: at most one more each


def test_compile_step_models_have_their_own_recompile_budget(fresh_dynamo):
    """Two models' chunks share one function's code: with one budget between them, the second model's graph
    would be past a limit of one."""
    first = tiny().eval().compile_step(backend=CountingBackend(), recompile_limit=1)
    second = BRIMs(8, hidden_sizes=[24], num_modules=[4], top_k=[2]).eval()
    second.compile_step(backend=CountingBackend(), recompile_limit=1)
    x = torch.randn(4, 2, 8)
    with torch.no_grad():
        first(x)
        second(x)


def test_compile_step_past_the_recompile_limit_raises_naming_what_varied(fresh_dynamo, caplog):
    """Past its limit a variant raises (fullgraph=True) instead of running eagerly unnoticed, with a note on
    what its calls varied, also logged; the calls it compiled for still run."""
    model = tiny().eval().compile_step(backend=CountingBackend(), recompile_limit=1)
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        expected, _ = model(x)
        with pytest.raises(Exception, match="batch took 3, 1") as raised:
            model(x[:, :1])  # a batch of one is specialised: a second graph
        assert "the 4-step chunk on cpu (without grad, eval mode, diagnostics off)" in str(raised.value.__notes__)
        assert "batch took 3, 1" in caplog.text
        assert torch.equal(model(x)[0], expected)


@pytest.mark.parametrize("option", ["fullgraph", "isolate_recompiles"])
def test_compile_step_refuses_to_give_up_its_guarantees(option):
    with pytest.raises(ValueError, match=f"compile_step\\(\\) sets {option}=True itself"):
        tiny().compile_step(**{option: False})


# ---- CUDA ----------------------------------------------------------------------------------------------


def to_device(state: BRIMsState, device) -> BRIMsState:
    return BRIMsState(tuple(t.to(device) for t in state.h), tuple(t.to(device) for t in state.c))


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 3])
def test_cuda_matches_cpu_float64(cell, layers):
    config = make_config(cell, layers)
    cpu = build(config)
    gpu = build(config).cuda()
    x = random_input(config, 5, 4)
    state = random_state(cpu, 4)
    expected, expected_state, expected_diag = cpu(x, state, return_diagnostics=True)
    output, final, diagnostics = gpu(x.cuda(), to_device(state, "cuda"), return_diagnostics=True)
    assert output.is_cuda and all(t.is_cuda for t in final.h + final.c)
    torch.testing.assert_close(output.cpu(), expected, **TOL)
    for a, b in zip(final.h + final.c, expected_state.h + expected_state.c):
        torch.testing.assert_close(a.cpu(), b, **TOL)
    for layer in range(layers):
        assert torch.equal(diagnostics.active[layer].cpu(), expected_diag.active[layer])
        torch.testing.assert_close(diagnostics.attention[layer].cpu(), expected_diag.attention[layer], **TOL)


@needs_cuda
def test_cuda_float32_close_to_cpu_and_trains():
    config = make_config("lstm", 2)
    cpu = build(config, dtype=torch.float32)
    gpu = build(config, dtype=torch.float32).cuda()
    x = random_input(config, 4, 3, dtype=torch.float32)
    expected, _ = cpu(x)
    output, _ = gpu(x.cuda())
    torch.testing.assert_close(output.cpu(), expected, rtol=1e-4, atol=1e-5)
    gpu.train()
    output, state = gpu(x.cuda())
    output.square().mean().backward()
    assert all(p.grad is not None and p.grad.is_cuda and torch.isfinite(p.grad).all() for p in gpu.parameters())
    state = gpu.init_state(3)
    assert all(t.is_cuda and t.dtype == torch.float32 for t in state.h + state.c)


@needs_cuda
def test_cuda_step_by_step_cell_and_reset():
    config = make_config("gru", 2)
    gpu = build(config).cuda()
    x = random_input(config, 3, 4).cuda()
    output, _ = gpu(x)
    state = None
    for t in range(3):
        step, state = gpu.cell(x[t], state)
        torch.testing.assert_close(step, output[t], **TOL)
    rows = torch.tensor([True, False, True, False], device="cuda")
    _, reset_state = gpu.cell(x[0], state, reset=rows)
    assert all(t.is_cuda for t in reset_state.h)


@needs_cuda
def test_cuda_device_mismatch_errors():
    config = make_config("lstm", 2)
    gpu = build(config).cuda()
    with pytest.raises(ValueError, match=r"input is on cpu, but the model's parameters are on cuda"):
        gpu(random_input(config, 2, 2))
    with pytest.raises(ValueError, match=r"state.h\[0\] is on cpu, but the input is on cuda"):
        gpu(random_input(config, 2, 2).cuda(), gpu.init_state(2, device="cpu"))


@needs_cuda
def test_cuda_compile_step_matches_eager(fresh_dynamo):
    config = make_config("lstm", 2)
    gpu = build(config).cuda()
    x = random_input(config, 3, 2).cuda()
    with torch.no_grad():
        expected, _ = gpu(x)
        output, _ = gpu.compile_step()(x)
    torch.testing.assert_close(output, expected, **TOL)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile_step"])
def test_cuda_mixed_precision_trains(fresh_dynamo, dtype, compiled):
    """What Lightning's 16-mixed / bf16-mixed does: an encoder hands the core a low-precision input
    under autocast. torch 2.11's inductor failed here (pad_mm) until compile_step turned padding off on CUDA."""
    config = make_config("lstm", 2)
    model = build(config, dtype=torch.float32, train=True).cuda()
    if compiled:
        model.compile_step()
    encoder = torch.nn.Linear(5, config.input_size).cuda()
    with torch.autocast("cuda", dtype=dtype):
        output, state = model(encoder(torch.randn(4, 3, 5, device="cuda")))
        loss = output.float().square().mean()
    loss.backward()
    assert all(t.dtype == torch.float32 for t in state.h + state.c)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
