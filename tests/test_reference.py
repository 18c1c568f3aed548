"""One BRIMs step against a naive reference written from docs/design.md section 1 (loops over layers, modules
and heads; no shared code with ``brims``). Eval mode (no dropout), float64.

The reference reads the model's parameters by name. Internal layouts it assumes are the
documented ones: per-module weights ``(n, in, out)``; slot projections ``nn.Linear`` whose outputs
are ``[keys (H*D, head-major) | values (A, head-major)]``; LSTM gates ``(i, f, o, g)``; GRU gates
``(r, z, n)`` with ``b_hn`` inside the reset product; communication output ``[update | gate]``.
For the communication's query/key/value columns two layouts are plausible and either is
accepted: per head ``[q_h | k_h | v_h]``, or ``[Q (all heads) | K | V]``.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import blocks, build, make_config, random_input, random_state

from brims import BRIMsState

TOL = {"rtol": 0, "atol": 1e-10}
BATCH = 3


def ref_cell(layer, k: int, a: torch.Tensor, h: torch.Tensor, c: torch.Tensor, kind: str):
    cell = layer.cell
    m = h.shape[-1]
    if kind == "lstm":
        gates = a @ cell.weight_ih[k] + h @ cell.weight_hh[k] + cell.bias[k]
        i, f, o, g = gates.split(m, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    x_gates = a @ cell.weight_ih[k] + cell.bias_ih[k]
    h_gates = h @ cell.weight_hh[k]
    r = torch.sigmoid(x_gates[:, :m] + h_gates[:, :m])
    z = torch.sigmoid(x_gates[:, m : 2 * m] + h_gates[:, m : 2 * m])
    n = torch.tanh(x_gates[:, 2 * m :] + r * (h_gates[:, 2 * m :] + cell.bias_hn[k]))
    h_new = (1 - z) * n + z * h
    return h_new, h_new


def qkv_columns(layout: str, head: int, heads: int, key: int, value: int):
    if layout == "per_head":
        start = head * (2 * key + value)
        return (slice(start, start + key), slice(start + key, start + 2 * key),
                slice(start + 2 * key, start + 2 * key + value))
    return (slice(head * key, (head + 1) * key), slice(heads * key + head * key, heads * key + (head + 1) * key),
            slice(2 * heads * key + head * value, 2 * heads * key + (head + 1) * value))


def ref_communication(layer, h_read: list[torch.Tensor], layout: str) -> list[torch.Tensor]:
    """Gated read of every module (the caller adds it to the active ones)."""
    comm = layer.communication
    heads, key, value = comm.heads, comm.key_size, comm.value_size
    n = len(h_read)
    qkv = [h_read[j] @ comm.qkv.weight[j] for j in range(n)]  # per module (B, Hc*(2Dc+Vc))
    updates = []
    for i in range(n):
        reads = []
        for head in range(heads):
            q_cols, k_cols, v_cols = qkv_columns(layout, head, heads, key, value)
            q = qkv[i][:, q_cols]
            logits = torch.stack([(q * qkv[j][:, k_cols]).sum(-1) / math.sqrt(key) for j in range(n)], -1)
            p = torch.softmax(logits, dim=-1)  # (B, n)
            reads.append(sum(p[:, j : j + 1] * qkv[j][:, v_cols] for j in range(n)))
        out = torch.cat(reads, -1) @ comm.out.weight[i] + comm.out.bias[i]  # (B, 2m)
        update, gate = out.chunk(2, dim=-1)
        updates.append(torch.sigmoid(gate) * torch.tanh(update))
    return updates


def reference_step(model, x: torch.Tensor, state: BRIMsState, layout: str):
    config = model.config
    L = config.num_layers
    new_h, new_c, actives, attentions = [], [], [], []
    bottom_up = x
    for l, layer in enumerate(model.cell.layers):
        n, k_active = config.num_modules[l], config.top_k[l]
        attention = layer.input_attention
        heads, key = attention.heads, attention.key_size
        slot_inputs = [(bottom_up, attention.bottom_up.weight)]
        if config.top_down and l < L - 1:
            slot_inputs.append((state.h[l + 1], attention.top_down.weight))  # layer l+1 at t-1
        projected = [inp @ w.T for inp, w in slot_inputs]  # (B, P) each
        keys = [p[:, : heads * key] for p in projected]
        values = [p[:, heads * key :] for p in projected]
        value = values[0].shape[-1] // heads
        h_old = list(blocks(state.h[l], n).unbind(1))  # n x (B, m)
        c_old = list(blocks(state.c[l], n).unbind(1))
        attended, null_scores, averaged = [], [], []
        for k in range(n):
            query = h_old[k] @ attention.query.weight[k]  # (B, H*D)
            parts, probs_all = [], []
            for head in range(heads):
                q = query[:, head * key : (head + 1) * key]
                logits = [torch.zeros(q.shape[0], dtype=q.dtype)]  # null slot: zero key
                logits += [(q * kk[:, head * key : (head + 1) * key]).sum(-1) / math.sqrt(key) for kk in keys]
                p = torch.softmax(torch.stack(logits, -1), -1)  # (B, 1 + S)
                probs_all.append(p)
                parts.append(sum(p[:, s + 1 : s + 2] * v[:, head * value : (head + 1) * value]
                                 for s, v in enumerate(values)))
            attended.append(torch.cat(parts, -1))
            mean = torch.stack(probs_all).mean(0)  # (B, 1 + S)
            averaged.append(mean)
            null_scores.append(mean[:, 0])
        null = torch.stack(null_scores, -1)  # (B, n)
        order = null.argsort(dim=-1, stable=True)
        active = torch.zeros_like(null, dtype=torch.bool).scatter_(1, order[:, :k_active], True)
        proposed = [ref_cell(layer, k, attended[k], h_old[k], c_old[k], config.cell) for k in range(n)]
        h_prop = [p[0] for p in proposed]
        c_prop = [p[1] for p in proposed]
        if config.communication:
            h_read = [torch.where(active[:, k : k + 1], h_prop[k], h_old[k]) for k in range(n)]
            updates = ref_communication(layer, h_read, layout)
            h_prop = [h_prop[k] + updates[k] for k in range(n)]
        h_new = [torch.where(active[:, k : k + 1], h_prop[k], h_old[k]) for k in range(n)]
        c_new = h_new if config.cell == "gru" else [torch.where(active[:, k : k + 1], c_prop[k], c_old[k])
                                                   for k in range(n)]
        new_h.append(torch.cat(h_new, -1))
        new_c.append(torch.cat(c_new, -1))
        actives.append(active)
        attentions.append(torch.stack(averaged, 1))  # (B, n, 1 + S)
        bottom_up = new_h[-1]
    return new_h[-1], BRIMsState(tuple(new_h), tuple(new_c)), actives, attentions


def mismatch(model, x, state, got, layout) -> str | None:
    """What differs from the reference (None if nothing)."""
    output, new_state, diagnostics = got
    ref_output, ref_state, ref_active, ref_attention = reference_step(model, x, state, layout)
    problems = []

    def compare(name, a, b):
        if not torch.allclose(a, b, rtol=0, atol=1e-10):
            problems.append(f"{name} max |diff| {(a - b).abs().max().item():.3g}")

    compare("output", output, ref_output)
    for layer in range(model.config.num_layers):
        compare(f"h[{layer}]", new_state.h[layer], ref_state.h[layer])
        compare(f"c[{layer}]", new_state.c[layer], ref_state.c[layer])
        compare(f"attention[{layer}]", diagnostics.attention[layer], ref_attention[layer])
        if not torch.equal(diagnostics.active[layer], ref_active[layer]):
            problems.append(f"active[{layer}]")
    return f"{layout} layout: " + ", ".join(problems) if problems else None


def matches(model, x, state, got, layout) -> bool:
    return mismatch(model, x, state, got, layout) is None


def check_against_reference(config, steps: int = 3):
    model = build(config)
    x = random_input(config, steps, BATCH)
    state = random_state(model, BATCH)
    with torch.no_grad():
        for t in range(steps):
            got = model.cell(x[t], state, return_diagnostics=True)
            layouts = ("per_head", "blocks") if config.communication else ("per_head",)
            problems = [mismatch(model, x[t], state, got, layout) for layout in layouts]
            assert None in problems, f"step {t} differs from the reference: {'; '.join(problems)}"
            state = got[1]


def test_step_matches_naive_reference(config):
    check_against_reference(config)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_matches_naive_reference_single_comm_head(cell):
    """With one communication head both qkv layouts coincide: the rest of the step is pinned exactly."""
    check_against_reference(make_config(cell, 3, comm_heads=1))


def test_reference_detects_a_wrong_model():
    """The comparison is not vacuous: a model with one changed weight fails it."""
    config = make_config("lstm", 2, comm_heads=1)
    model = build(config)
    x = random_input(config, 1, BATCH)[0]
    state = random_state(model, BATCH)
    with torch.no_grad():
        got = model.cell(x, state, return_diagnostics=True)
        assert matches(model, x, state, got, "per_head")
        model.cell.layers[1].cell.bias[0, 0] += 0.5  # the reference reads the new value, the result is stale
        assert not matches(model, x, state, got, "per_head")
