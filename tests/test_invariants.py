"""The model invariants of docs/design.md (section 5), over cell x layers x top_down x communication."""

from __future__ import annotations

import pytest
import torch
from support import blocks, build, make_config, random_input, random_state

from brims import BRIMs, BRIMsConfig, BRIMsState, RIMs

STEPS, BATCH = 5, 6


def run_steps(model: BRIMs, x: torch.Tensor, state: BRIMsState | None):
    """Run ``x`` one step per call; returns the states before/after each step and its diagnostics."""
    if state is None:
        state = model.init_state(x.shape[1])
    records = []
    for t in range(x.shape[0]):
        _, new_state, diagnostics = model(x[t : t + 1], state, return_diagnostics=True)
        records.append((state, new_state, diagnostics))
        state = new_state
    return records


def num_slots(config: BRIMsConfig, layer: int) -> int:
    return 2 if config.top_down and layer < config.num_layers - 1 else 1


# ---- 1. inactive modules keep their state bit for bit ----------------------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("initial", ["zero", "random"])
def test_inactive_modules_keep_state_bit_for_bit(config, train, initial):
    model = build(config, train=train)
    x = random_input(config, STEPS, BATCH)
    state = None if initial == "zero" else random_state(model, BATCH)
    checked_inactive = checked_active = 0
    for before, after, diagnostics in run_steps(model, x, state):
        for layer, n in enumerate(config.num_modules):
            active = diagnostics.active[layer][0]  # (B, n)
            for name in ("h", "c"):
                old = blocks(getattr(before, name)[layer], n)  # (B, n, m)
                new = blocks(getattr(after, name)[layer], n)
                assert torch.equal(new[~active], old[~active]), f"layer {layer}: inactive {name} changed"
                # Active modules do move (else this test could not tell keep-all from keep-inactive).
                moved = (new[active] != old[active]).any(dim=-1)
                assert moved.all(), f"layer {layer}: an active module's {name} did not change"
            checked_inactive += int((~active).sum())
            checked_active += int(active.sum())
    assert checked_inactive > 0 and checked_active > 0


def test_inactive_top_layer_modules_keep_output_over_a_whole_sequence(config):
    """The same invariant seen through one whole-sequence call: output[t] is the top layer's h_t."""
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    output, final, diagnostics = model(x, state, return_diagnostics=True)
    n = config.num_modules[-1]
    previous = torch.cat([state.h[-1].unsqueeze(0), output[:-1]])  # h_{t-1} of the top layer
    active = diagnostics.active[-1]  # (T, B, n)
    assert torch.equal(blocks(output, n)[~active], blocks(previous, n)[~active])
    assert torch.equal(output[-1], final.h[-1])


def test_inactive_module_dynamics_do_not_leak(config):
    """An inactive module's own cell weights influence nothing at that step: not its layer (the
    communication reads its kept h_{t-1}, not its proposal), not the layers above."""
    x = random_input(config, 1, 16)
    reference = build(config)
    state = random_state(reference, 16)
    _, ref_state, diagnostics = reference(x, state, return_diagnostics=True)
    for layer, n in enumerate(config.num_modules):
        active = diagnostics.active[layer][0]  # (B, n)
        mixed = [k for k in range(n) if active[:, k].any() and not active[:, k].all()]
        if config.top_k[layer] == n:
            continue
        assert mixed, f"layer {layer}: no module is active for some examples and inactive for others"
        module = mixed[0]
        perturbed = build(config)
        with torch.no_grad():
            for parameter in perturbed.cell.layers[layer].cell.parameters():
                parameter[module].add_(0.5)  # this module's own LSTM/GRU weights
        _, new_state, new_diagnostics = perturbed(x, state, return_diagnostics=True)
        assert torch.equal(new_diagnostics.active[layer], diagnostics.active[layer])
        inactive_rows = ~active[:, module]  # (B,): examples where the module sat out
        for a, b in zip(new_state.h[layer:] + new_state.c[layer:], ref_state.h[layer:] + ref_state.c[layer:]):
            assert torch.equal(a[inactive_rows], b[inactive_rows])
        assert not torch.equal(new_state.h[layer][~inactive_rows], ref_state.h[layer][~inactive_rows])


# ---- 2. exactly top_k active, and they are the k lowest null scores ------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_exactly_top_k_modules_active(config, train):
    model = build(config, train=train)
    x = random_input(config, STEPS, BATCH)
    _, _, diagnostics = model(x, random_state(model, BATCH), return_diagnostics=True)
    for layer, (n, k) in enumerate(zip(config.num_modules, config.top_k)):
        active = diagnostics.active[layer]
        assert active.dtype == torch.bool and active.shape == (STEPS, BATCH, n)
        assert torch.equal(active.sum(dim=-1), torch.full((STEPS, BATCH), k))


def test_active_modules_are_those_with_lowest_null_attention(config):
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    _, _, diagnostics = model(x, random_state(model, BATCH), return_diagnostics=True)
    for layer, k in enumerate(config.top_k):
        active = diagnostics.active[layer]
        null_score = diagnostics.attention[layer][..., 0]  # (T, B, n)
        if k == config.num_modules[layer]:
            continue
        highest_active = null_score.masked_fill(~active, -1.0).amax(dim=-1)
        lowest_inactive = null_score.masked_fill(active, 2.0).amin(dim=-1)
        assert (highest_active <= lowest_inactive).all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_top_k_equal_to_num_modules_updates_every_module(cell):
    config = make_config(cell, 2, top_k=(4, 2))
    model = build(config)
    x = random_input(config, 3, BATCH)
    for before, after, diagnostics in run_steps(model, x, random_state(model, BATCH)):
        for layer, n in enumerate(config.num_modules):
            assert diagnostics.active[layer].all()
            assert (blocks(after.h[layer], n) != blocks(before.h[layer], n)).any(dim=-1).all()


# ---- 2b. no gradient into inactive modules through communication ---------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_no_gradient_reaches_inactive_modules_through_communication(config, train):
    """The authors' ``blocked_grad``: in every layer, the Jacobian of every module's new ``h`` with
    respect to an inactive module's previous ``h`` is the identity on the diagonal (it keeps its
    state) and zero off it, while active modules are coupled through communication (when it is on).
    One example at a time, each with its own active set; the layer's inputs are held fixed."""
    model = build(config, train=train)
    rows = 4
    state = random_state(model, rows)
    coupled = 0
    for index, layer in enumerate(model.cell.layers):
        n = config.num_modules[index]
        below = config.input_size if index == 0 else config.hidden_sizes[index - 1]
        bottom_up = _probe(torch.empty(rows, below, dtype=torch.float64), 20 + index)
        top_down = state.h[index + 1] if layer.reads_top_down else None
        for row in range(rows):
            inputs = (bottom_up[row : row + 1], None if top_down is None else top_down[row : row + 1])
            c = state.c[index][row : row + 1]

            def new_h(h: torch.Tensor, layer=layer, c=c, inputs=inputs) -> torch.Tensor:  # (n*m,) -> (n*m,)
                torch.manual_seed(7)  # the same dropout masks in every call
                return layer(h.unsqueeze(0), h.unsqueeze(0) if config.cell == "gru" else c, *inputs).h[0]

            h = state.h[index][row]
            jacobian = torch.autograd.functional.jacobian(new_h, h)  # (n*m new, n*m old)
            block = jacobian.view(n, jacobian.shape[0] // n, n, -1).transpose(1, 2)  # (n new, n old, m, m)
            torch.manual_seed(7)
            active = layer(h.unsqueeze(0), h.unsqueeze(0) if config.cell == "gru" else c, *inputs).active[0]  # (n,)
            for j in range(n):
                for i in range(n):
                    if not active[j]:
                        expected = torch.eye(block.shape[-1], dtype=block.dtype) if i == j else torch.zeros_like(block[i, j])
                        assert torch.equal(block[i, j], expected), f"layer {index}: gradient from inactive {j} into {i}"
                    elif i != j and active[i]:
                        coupled += int(torch.count_nonzero(block[i, j]) > 0)
    if config.communication:
        assert coupled > 0, "communication couples no active modules"
    else:
        assert coupled == 0, "modules coupled without communication"


# ---- 3. top-down: layer l at t reads layer l+1 at t-1, and only when on ------------------------------


def _probe(t: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)


def test_top_down_gradient_from_upper_initial_state(multi_layer_config):
    config = multi_layer_config
    model = build(config)
    x = random_input(config, 1, BATCH)
    state = random_state(model, BATCH)
    h0 = tuple(h.clone().requires_grad_(True) for h in state.h)
    state = BRIMsState(h0, h0 if config.cell == "gru" else state.c)
    _, new_state = model(x, state)
    for layer in range(config.num_layers - 1):
        loss = (new_state.h[layer] * _probe(new_state.h[layer], layer)).sum()
        (grad,) = torch.autograd.grad(loss, h0[layer + 1], retain_graph=True, allow_unused=True)
        if config.top_down:
            assert grad is not None and grad.abs().sum() > 0, f"no top-down path into layer {layer}"
        else:
            assert grad is None or torch.count_nonzero(grad) == 0, f"top-down path into layer {layer} while off"


def test_top_down_gradient_between_steps(multi_layer_config):
    """Within one unrolled graph: h^l_2 depends on h^{l+1}_1 exactly when top-down is on."""
    config = multi_layer_config
    model = build(config)
    x = random_input(config, 2, BATCH)
    _, state_1 = model(x[:1], random_state(model, BATCH))
    upper = [h.detach().requires_grad_(True) for h in state_1.h]  # cut the graph: only t=1 -> t=2 paths remain
    state_1 = BRIMsState(tuple(upper), tuple(upper) if config.cell == "gru" else state_1.c)
    _, state_2 = model(x[1:2], state_1)
    for layer in range(config.num_layers - 1):
        loss = (state_2.h[layer] * _probe(state_2.h[layer], 10 + layer)).sum()
        (grad,) = torch.autograd.grad(loss, upper[layer + 1], retain_graph=True, allow_unused=True)
        if config.top_down:
            assert grad is not None and grad.abs().sum() > 0
        else:
            assert grad is None or torch.count_nonzero(grad) == 0
        # Two layers up is never one step away.
        if layer + 2 < config.num_layers:
            (grad,) = torch.autograd.grad(loss, upper[layer + 2], retain_graph=True, allow_unused=True)
            assert grad is None or torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("layers", [2, 3])
def test_top_down_reads_h_not_c(layers):
    config = make_config("lstm", layers, top_down=True)
    model = build(config)
    state = random_state(model, BATCH)
    c0 = tuple(c.clone().requires_grad_(True) for c in state.c)
    _, new_state = model(random_input(config, 1, BATCH), BRIMsState(state.h, c0))
    for layer in range(layers - 1):
        (grad,) = torch.autograd.grad(new_state.h[layer].sum(), c0[layer + 1], retain_graph=True, allow_unused=True)
        assert grad is None or torch.count_nonzero(grad) == 0


def _perturb_layers_above(model: BRIMs, layer: int) -> None:
    with torch.no_grad():
        for upper in model.cell.layers[layer + 1 :]:
            for parameter in upper.parameters():
                parameter.add_(0.3 * _probe(parameter, 99))


def test_layer_does_not_read_upper_layer_of_the_same_step(multi_layer_config):
    """Changing layer l+1's weights changes its h_t but never layer l's h_t at t = 0; with top-down
    off, layers <= l never see the change at any step; with it on, they do from t = 1."""
    config = multi_layer_config
    x = random_input(config, 3, BATCH)
    for layer in range(config.num_layers - 1):
        reference, perturbed = build(config), build(config)
        _perturb_layers_above(perturbed, layer)
        state = random_state(reference, BATCH)
        ref_records = run_steps(reference, x, state)
        new_records = run_steps(perturbed, x, state)
        # The perturbation is real: the layer above moves at the first step.
        assert not torch.equal(ref_records[0][1].h[layer + 1], new_records[0][1].h[layer + 1])
        for t, ((_, ref_state, _), (_, new_state, _)) in enumerate(zip(ref_records, new_records)):
            same = all(torch.equal(a, b) for a, b in zip(ref_state.h[: layer + 1], new_state.h[: layer + 1]))
            same_c = all(torch.equal(a, b) for a, b in zip(ref_state.c[: layer + 1], new_state.c[: layer + 1]))
            if t == 0 or not config.top_down:
                assert same and same_c, f"layer {layer} at t={t} depends on layers above at the same step"
            else:
                assert not torch.equal(ref_state.h[layer], new_state.h[layer]), f"no top-down at t={t}"


# ---- 5. parameters: analytic count, and no dead weight ---------------------------------------------


def analytic_parameter_count(config: BRIMsConfig) -> int:
    total = 0
    heads, key = config.input_heads, config.input_key_size
    c_heads, c_key, c_value = config.comm_heads, config.comm_key_size, config.comm_value_size
    for layer in range(config.num_layers):
        n = config.num_modules[layer]
        m = config.hidden_sizes[layer] // n
        gates = (4 if config.cell == "lstm" else 3) * m
        attended = config.input_value_factor * m
        slot = heads * key + attended
        bottom_up = config.input_size if layer == 0 else config.hidden_sizes[layer - 1]
        total += bottom_up * slot
        if config.top_down and layer < config.num_layers - 1:
            total += config.hidden_sizes[layer + 1] * slot
        total += n * m * heads * key  # queries
        total += n * attended * gates + n * m * gates  # cell weights
        total += n * 4 * m  # LSTM: one 4m bias; GRU: 3m input bias + m for the reset-gated hidden bias
        if config.communication:
            total += n * m * c_heads * (2 * c_key + c_value) + n * c_heads * c_value * 2 * m + n * 2 * m
    return total


def test_parameter_count_matches_analytic_count(config):
    model = build(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == analytic_parameter_count(config)
    assert sum(p.numel() for p in model.cell.parameters()) == count


def test_parameter_count_default_configs():
    config = BRIMsConfig(8)
    assert sum(p.numel() for p in BRIMs(8).parameters()) == analytic_parameter_count(config)
    gru = BRIMsConfig(8, cell="gru", top_down=False, communication=False)
    model = BRIMs.from_config(gru)
    assert sum(p.numel() for p in model.parameters()) == analytic_parameter_count(gru)
    rims = RIMs(8, 60, 6, 4)
    expected = analytic_parameter_count(BRIMsConfig(8, (60,), (6,), (4,), top_down=False))
    assert sum(p.numel() for p in rims.parameters()) == expected


def test_parameter_count_hand_computed():
    """One count written out by hand, so the analytic formula itself is pinned down."""
    config = BRIMsConfig(
        3, (4,), (2,), (1,), input_heads=1, input_key_size=2, input_value_factor=1,
        comm_heads=1, comm_key_size=1, comm_value_size=1,
    )
    # n=2, m=2, P = 1*2 + 2 = 4: bottom-up 3*4=12, query 2*2*2=8, cell 2*2*8 + 2*2*8 = 64,
    # bias 2*8=16, communication 2*2*1*3=12 + 2*1*1*4=8 + 2*4=8.
    assert sum(p.numel() for p in BRIMs.from_config(config).parameters()) == 12 + 8 + 64 + 16 + 12 + 8 + 8


def test_no_dead_weights(config):
    """After a backward in train mode, every parameter has a non-zero gradient somewhere."""
    model = build(config, train=True)
    x = random_input(config, 4, 8)
    output, _state = model(x, random_state(model, 8))
    loss = (output * _probe(output, 5)).sum()
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_no_top_down_parameters_when_off():
    for layers in (1, 2, 3):
        model = build(make_config("lstm", layers, top_down=False))
        assert not [name for name, _ in model.named_parameters() if "top_down" in name]
    model = build(make_config("lstm", 3, top_down=True))
    names = [name for name, _ in model.named_parameters() if "top_down" in name]
    assert len(names) == 2  # layers 0 and 1 read the layer above; the top layer has none


# ---- 8. diagnostics and state shapes ----------------------------------------------------------------


def test_diagnostics_shapes_and_attention_sums(config):
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    output, state, diagnostics = model(x, return_diagnostics=True)
    L = config.num_layers
    assert output.shape == (STEPS, BATCH, config.hidden_sizes[-1])
    assert len(state.h) == len(state.c) == L
    assert len(diagnostics.active) == len(diagnostics.attention) == L
    for layer, (hidden, n) in enumerate(zip(config.hidden_sizes, config.num_modules)):
        assert state.h[layer].shape == state.c[layer].shape == (BATCH, hidden)
        assert diagnostics.active[layer].shape == (STEPS, BATCH, n)
        attention = diagnostics.attention[layer]
        assert attention.shape == (STEPS, BATCH, n, 1 + num_slots(config, layer))
        assert (attention >= 0).all()
        torch.testing.assert_close(attention.sum(-1), torch.ones(STEPS, BATCH, n, dtype=attention.dtype))


def test_batch_first_diagnostics_shapes():
    config = make_config("lstm", 2, batch_first=True)
    model = build(config)
    x = random_input(config, STEPS, BATCH).transpose(0, 1)  # (B, T, F)
    output, _, diagnostics = model(x, return_diagnostics=True)
    assert output.shape == (BATCH, STEPS, config.hidden_sizes[-1])
    assert diagnostics.active[0].shape == (BATCH, STEPS, 4)
    assert diagnostics.attention[0].shape == (BATCH, STEPS, 4, 3)
    assert diagnostics.attention[1].shape == (BATCH, STEPS, 2, 2)


def test_cell_diagnostics_shapes(config):
    model = build(config)
    x = random_input(config, 1, BATCH)[0]
    output, _state, diagnostics = model.cell(x, return_diagnostics=True)
    assert output.shape == (BATCH, config.hidden_sizes[-1])
    for layer, n in enumerate(config.num_modules):
        assert diagnostics.active[layer].shape == (BATCH, n)
        assert diagnostics.active[layer].dtype == torch.bool
        assert diagnostics.attention[layer].shape == (BATCH, n, 1 + num_slots(config, layer))
        assert torch.equal(diagnostics.active[layer].sum(-1), torch.full((BATCH,), config.top_k[layer]))
    assert len(model.cell(x)) == 2  # no diagnostics unless asked


def test_first_step_from_zero_state_attends_uniformly(config):
    """Queries come from h_{t-1} with no bias, and the null logit is 0: zero state -> uniform attention."""
    model = build(config)
    _, _, diagnostics = model(random_input(config, 1, BATCH), return_diagnostics=True)
    for layer in range(config.num_layers):
        attention = diagnostics.attention[layer]
        torch.testing.assert_close(attention, torch.full_like(attention, 1.0 / attention.shape[-1]))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_gru_state_c_equals_h(layers):
    config = make_config("gru", layers)
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    # A GRU ignores any given c: pass one that differs from h.
    state = BRIMsState(state.h, tuple(torch.randn_like(h) for h in state.h))
    reference, _ = model(x, BRIMsState(state.h, state.h))
    output, final = model(x, state)
    assert torch.equal(output, reference)
    for h, c in zip(final.h, final.c):
        assert torch.equal(h, c)
    _, cell_state = model.cell(x[0], state)
    for h, c in zip(cell_state.h, cell_state.c):
        assert torch.equal(h, c)


def test_init_state_is_zero_with_given_dtype():
    model = build(make_config("lstm", 2))
    state = model.init_state(3)
    assert all(t.dtype == torch.float64 and t.shape == (3, s) and not t.any() for t, s in zip(state.h, (12, 10)))
    state = model.init_state(3, device="cpu", dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in state.h + state.c)


# ---- ties ------------------------------------------------------------------------------------------


def test_ties_in_the_null_score_go_to_the_lower_module_index():
    """From a zero state every query is zero, so every module attends to null alike at step 0:
    the choice must not depend on the device's top-k (CUDA breaks ties differently from CPU)."""
    from brims.layer import select_top_k

    null_score = torch.tensor([[0.5, 0.2, 0.6], [0.5, 0.2, 0.1], [0.5, 0.9, 0.5], [0.5, 0.2, 0.5]])  # (n=4, B=3)
    chosen = select_top_k(null_score, 2)
    assert chosen.T.tolist() == [[True, True, False, False], [True, True, False, False], [False, True, True, False]]
    config = make_config("lstm", 2)
    _, _, diagnostics = build(config)(random_input(config, 1, 3), return_diagnostics=True)
    for active, k in zip(diagnostics.active, config.top_k):
        assert active[0].tolist() == [[i < k for i in range(active.shape[-1])]] * 3


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_the_top_k_choice_equals_a_stable_sort_of_the_null_score(k):
    """The pairwise ranking picks what a stable sort's first k would, ties and all."""
    from brims.layer import select_top_k

    generator = torch.Generator().manual_seed(k)
    null_score = torch.randint(0, 4, (6, 50), generator=generator).float() / 4  # (n, B), many ties
    expected = torch.zeros_like(null_score, dtype=torch.bool)
    expected.scatter_(0, torch.sort(null_score, dim=0, stable=True).indices[:k], True)
    chosen = select_top_k(null_score, k)
    assert torch.equal(chosen, expected)
    assert (chosen.sum(dim=0) == k).all()
