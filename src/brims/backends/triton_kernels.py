"""Triton kernels of one BRIMs layer step: the whole step forward in one kernel, and its backward in one.

The math is :meth:`brims.layer.BRIMsLayer.forward`'s (docs/design.md, section 1); this file only
schedules it. Each program owns ``BLOCK_B`` batch rows and every module of the layer, so the
competition (a module's rank among the modules of its row) and the communication (every module
of a row reads every other) need no synchronisation across programs. Within a program the passes
over modules meet in global scratch buffers, separated by ``tl.debug_barrier()``. The loops over
modules and heads are ``tl.range`` loops, not unrolled, so that a kernel compiles in seconds.

The dots whose inner dimension is a module's units or a head's attended values read their left
operand from memory 16 columns at a time (``_matmul_rows``, ``_matmul_t_rows``; the operand is
stored first, and a barrier lets every thread read what the others wrote): Triton lowers an fp32
``ieee`` ``tl.dot`` to FMAs over whole operand tiles held in registers, and whole 128-wide tiles
made ptxas spill up to 79 KB a thread at the released sizes (docs/speed.md). The kernels are
launched with one stage (:data:`brims.backends.fused.LAUNCH_OPTIONS`). ``PRECISION`` is the dots'
input precision, ``"ieee"`` or ``"tf32"`` (tensor cores), chosen per step by
:func:`brims.backends.fused.dot_precision` to follow torch's float32 matmul setting and autocast.

Dimension legend: B = batch, N = modules, M = units per module, H / D / V = input-attention
heads / key size / value size per head, S = non-null slots (1 or 2), H2 / D2 / V2 = the same for
communication, G = gates per module (4M LSTM, 3M GRU). ``*_P`` is a size padded to a power of two
(at least 16, what ``tl.dot`` needs); padded lanes load as zero and are never stored.

Layouts: the state ``(B, N*M)`` as the layer gets it (module ``k`` owns columns ``k*M ..``);
slot projections ``(B, S, H*D + H*V)`` (keys then values, head-major); weights ``(N, in, out)``;
saved activations and their gradients module-first, ``(N, B, X)``; LSTM gates ``(i, f, o, g)``,
GRU gates ``(r, z, n)``; communication columns per head ``[q | k | v]`` and output ``[u | g]``.

Triton has no ``tanh`` that its interpreter runs, so ``tanh(x) = 2 σ(2x) - 1``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _rsqrt(size: tl.constexpr, like):
    """``1/sqrt(size)`` in ``like``'s dtype (a Python float would make it a float32 constant)."""
    return 1.0 / tl.sqrt(tl.full((1,), size, dtype=like.dtype))


@triton.jit
def _rows(ptr, rows, row_stride, row_ok):
    """One value per batch row, ``ptr[rows * row_stride]``, ``(BLOCK_B,)``."""
    return tl.load(ptr + rows * row_stride, mask=row_ok, other=0.0)


@triton.jit
def _put_rows(ptr, rows, row_stride, row_ok, value):
    tl.store(ptr + rows * row_stride, value, mask=row_ok)


@triton.jit
def _tile(ptr, rows, row_stride, cols, row_ok, col_ok):
    """``ptr[rows * row_stride + cols]``, ``(BLOCK_B, len(cols))``, zero where masked."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _put(ptr, rows, row_stride, cols, row_ok, col_ok, value):
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _vector(ptr, cols, col_ok):
    """A bias slice as a ``(1, len(cols))`` row."""
    return tl.load(ptr + cols, mask=col_ok, other=0.0)[None, :]


@triton.jit
def _matmul(x, w_ptr, width: tl.constexpr, in_index, in_ok, out_start, out_index, out_ok, PRECISION: tl.constexpr):
    """``x @ W[in_index, out_start + out_index]`` for a row-major weight ``W`` of ``width`` columns."""
    w = tl.load(w_ptr + in_index[:, None] * width + out_start + out_index[None, :],
                mask=in_ok[:, None] & out_ok[None, :], other=0.0)
    return tl.dot(x, w, input_precision=PRECISION)


@triton.jit
def _matmul_rows(x_ptr, rows, row_stride, row_ok, K: tl.constexpr, K_P: tl.constexpr, w_ptr, width: tl.constexpr,
                 out_start, out_index, out_ok, PRECISION: tl.constexpr):
    """``x[rows, :K] @ W[:K, out_start + out_index]`` for an ``x`` in memory, 16 of ``K`` at a time."""
    chunk = tl.arange(0, 16)
    acc = _matmul(_tile(x_ptr, rows, row_stride, chunk, row_ok, chunk < K), w_ptr, width, chunk, chunk < K,
                  out_start, out_index, out_ok, PRECISION)
    for start in tl.range(16, K_P, 16):
        index = start + chunk
        acc += _matmul(_tile(x_ptr, rows, row_stride, index, row_ok, index < K), w_ptr, width, index, index < K,
                       out_start, out_index, out_ok, PRECISION)
    return acc


@triton.jit
def _matmul_t(dy, w_ptr, width: tl.constexpr, in_index, in_ok, out_start, out_index, out_ok, PRECISION: tl.constexpr):
    """``dy @ W[in_index, out_start + out_index]^T``: the same block carrying a gradient back to its input."""
    w = tl.load(w_ptr + in_index[None, :] * width + out_start + out_index[:, None],
                mask=in_ok[None, :] & out_ok[:, None], other=0.0)
    return tl.dot(dy, w, input_precision=PRECISION)


@triton.jit
def _matmul_t_rows(dy_ptr, rows, row_stride, row_ok, K: tl.constexpr, K_P: tl.constexpr, w_ptr, width: tl.constexpr,
                   in_index, in_ok, out_start, PRECISION: tl.constexpr):
    """``dy[rows, :K] @ W[in_index, out_start : out_start + K]^T`` for a ``dy`` in memory, 16 of ``K`` at a time."""
    chunk = tl.arange(0, 16)
    acc = _matmul_t(_tile(dy_ptr, rows, row_stride, chunk, row_ok, chunk < K), w_ptr, width, in_index, in_ok,
                    out_start, chunk, chunk < K, PRECISION)
    for start in tl.range(16, K_P, 16):
        index = start + chunk
        acc += _matmul_t(_tile(dy_ptr, rows, row_stride, index, row_ok, index < K), w_ptr, width, in_index, in_ok,
                         out_start, index, index < K, PRECISION)
    return acc


@triton.jit
def _slot_attention(query, slots_ptr, rows, row_ok, head, keys, key_ok,
                    H: tl.constexpr, D: tl.constexpr, V: tl.constexpr, S: tl.constexpr):
    """One head's softmax over ``[null, slot 0, slot 1]`` (the null logit is 0): probabilities and the slots' keys."""
    SLOT: tl.constexpr = H * D + H * V
    scale = _rsqrt(D, query)
    key0 = _tile(slots_ptr + head * D, rows, S * SLOT, keys, row_ok, key_ok)
    logit0 = tl.sum(query * key0, axis=1) * scale
    if S == 2:
        key1 = _tile(slots_ptr + SLOT + head * D, rows, S * SLOT, keys, row_ok, key_ok)
        logit1 = tl.sum(query * key1, axis=1) * scale
        top = tl.maximum(tl.maximum(logit0, logit1), 0.0)
        e1 = tl.exp(logit1 - top)
    else:
        key1 = key0
        top = tl.maximum(logit0, 0.0)
        e1 = tl.zeros_like(logit0)
    e_null = tl.exp(-top)
    e0 = tl.exp(logit0 - top)
    total = e_null + e0 + e1
    return e_null / total, e0 / total, e1 / total, key0, key1


@triton.jit
def _kept(p, keep_ptr, k, head, slot, rows, row_ok, B, H: tl.constexpr, S: tl.constexpr, DROP: tl.constexpr):
    """``p`` times its dropout keep mask ``keep[k, rows, head, slot]`` (scaled by ``1/(1-p)``)."""
    if DROP:
        p = p * _rows(keep_ptr + (k * B * H + head) * S + slot, rows, H * S, row_ok)
    return p


@triton.jit
def _comm_logit(qkv_ptr, i, j, head, rows, row_ok, keys2, key2_ok, B, D2: tl.constexpr, QKV: tl.constexpr,
                HEAD: tl.constexpr):
    """Communication logit of module ``i`` reading module ``j`` in one head, ``q_i . k_j / sqrt(D2)``."""
    query = _tile(qkv_ptr + i * B * QKV + head * HEAD, rows, QKV, keys2, row_ok, key2_ok)
    key = _tile(qkv_ptr + j * B * QKV + head * HEAD + D2, rows, QKV, keys2, row_ok, key2_ok)
    return tl.sum(query * key, axis=1) * _rsqrt(D2, query)


@triton.jit
def _comm_keep(keep_ptr, i, j, head, rows, row_ok, B, N: tl.constexpr, H2: tl.constexpr, DROP: tl.constexpr):
    """The dropout keep mask ``keep[i, j, rows, head]``, or 1.0 without dropout: one return, since Triton's
    front end refuses a function whose returns differ in type (a tensor here, a scalar there)."""
    keep = 1.0
    if DROP:
        keep = _rows(keep_ptr + ((i * N + j) * B) * H2 + head, rows, H2, row_ok)
    return keep


@triton.jit
def layer_step_forward(
    h_ptr, c_ptr, slots_ptr,  # (B, N*M) x2, (B, S, H*D + H*V)
    wq_ptr, wih_ptr, whh_ptr, bias_ptr, bias_hn_ptr,  # (N, M, H*D), (N, H*V, G), (N, M, G), (N, G), GRU (N, M)
    wqkv_ptr, wout_ptr, bout_ptr,  # (N, M, H2*(2*D2+V2)), (N, H2*V2, 2M), (N, 2M)
    keep_in_ptr, keep_comm_ptr,  # dropout keep masks, scaled: (N, B, H, S), (N, N, B, H2)
    h_out_ptr, c_out_ptr, active_ptr, attention_ptr,  # (B, N*M) x2, (B, N) int8, (B, N, 1+S)
    query_ptr, attended_ptr, gates_ptr, hgates_ptr,  # saved: (N, B, H*D), (N, B, H*V), (N, B, G), GRU (N, B, G)
    h_prop_ptr, null_ptr,  # saved: (N, B, M), (N, B)
    qkv_ptr, lse_ptr, read_ptr,  # saved: (N, B, H2*(2*D2+V2)), (N, B, H2) log-sum-exp, (N, B, H2*V2)
    B,
    N: tl.constexpr, TOP_K: tl.constexpr, M: tl.constexpr, M_P: tl.constexpr,
    H: tl.constexpr, D: tl.constexpr, D_P: tl.constexpr, V: tl.constexpr, V_P: tl.constexpr, S: tl.constexpr,
    H2: tl.constexpr, D2: tl.constexpr, D2_P: tl.constexpr, V2: tl.constexpr, V2_P: tl.constexpr,
    IS_GRU: tl.constexpr, HAS_COMM: tl.constexpr, DROP_IN: tl.constexpr, DROP_COMM: tl.constexpr,
    BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    units = tl.arange(0, M_P)
    unit_ok = units < M
    keys = tl.arange(0, D_P)
    key_ok = keys < D
    vals = tl.arange(0, V_P)
    val_ok = vals < V
    STATE: tl.constexpr = N * M
    SLOT: tl.constexpr = H * D + H * V
    G: tl.constexpr = 3 * M if IS_GRU else 4 * M
    A: tl.constexpr = H * V

    # Pass 1, per module: input attention (steps 1-2), then the module's cell (step 4).
    for k in tl.range(N):
        h = _tile(h_ptr + k * M, rows, STATE, units, row_ok, unit_ok)  # (BLOCK_B, M_P)
        gate0 = tl.zeros((BLOCK_B, M_P), dtype=h.dtype)
        gate1 = tl.zeros((BLOCK_B, M_P), dtype=h.dtype)
        gate2 = tl.zeros((BLOCK_B, M_P), dtype=h.dtype)
        gate3 = tl.zeros((BLOCK_B, M_P), dtype=h.dtype)
        seen_null = tl.zeros((BLOCK_B,), dtype=h.dtype)
        seen0 = tl.zeros((BLOCK_B,), dtype=h.dtype)
        seen1 = tl.zeros((BLOCK_B,), dtype=h.dtype)
        wih = wih_ptr + k * A * G
        for head in tl.range(H):
            query = _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, wq_ptr + k * M * H * D, H * D, head * D, keys,
                                 key_ok, PRECISION)
            _put(query_ptr + k * B * H * D + head * D, rows, H * D, keys, row_ok, key_ok, query)  # (BLOCK_B, D_P)
            p_null, p0, p1, _, _ = _slot_attention(query, slots_ptr, rows, row_ok, head, keys, key_ok, H, D, V, S)
            seen_null += p_null / H
            seen0 += p0 / H
            seen1 += p1 / H
            value0 = _tile(slots_ptr + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok)
            attended = _kept(p0, keep_in_ptr, k, head, 0, rows, row_ok, B, H, S, DROP_IN)[:, None] * value0
            if S == 2:
                value1 = _tile(slots_ptr + SLOT + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok)
                attended += _kept(p1, keep_in_ptr, k, head, 1, rows, row_ok, B, H, S, DROP_IN)[:, None] * value1
            _put(attended_ptr + k * B * A + head * V, rows, A, vals, row_ok, val_ok, attended)  # (BLOCK_B, V_P)
            tl.debug_barrier()  # the dots read it back in column chunks, from other threads
            seen = attended_ptr + k * B * A + head * V
            wih_head = wih + head * V * G  # the rows of W_ih this head's values meet
            gate0 += _matmul_rows(seen, rows, A, row_ok, V, V_P, wih_head, G, 0 * M, units, unit_ok, PRECISION)
            gate1 += _matmul_rows(seen, rows, A, row_ok, V, V_P, wih_head, G, 1 * M, units, unit_ok, PRECISION)
            gate2 += _matmul_rows(seen, rows, A, row_ok, V, V_P, wih_head, G, 2 * M, units, unit_ok, PRECISION)
            if not IS_GRU:
                gate3 += _matmul_rows(seen, rows, A, row_ok, V, V_P, wih_head, G, 3 * M, units, unit_ok, PRECISION)
        attention_row = attention_ptr + k * (1 + S)
        _put_rows(null_ptr + k * B, rows, 1, row_ok, seen_null)
        _put_rows(attention_row, rows, N * (1 + S), row_ok, seen_null)
        _put_rows(attention_row + 1, rows, N * (1 + S), row_ok, seen0)
        if S == 2:
            _put_rows(attention_row + 2, rows, N * (1 + S), row_ok, seen1)

        whh = whh_ptr + k * M * G
        saved = gates_ptr + k * B * G
        bias = bias_ptr + k * G
        gate0 += _vector(bias + 0 * M, units, unit_ok)
        gate1 += _vector(bias + 1 * M, units, unit_ok)
        gate2 += _vector(bias + 2 * M, units, unit_ok)
        if IS_GRU:
            # Input gates x W_ih + b_ih and hidden gates h W_hh, saved apart: b_hn sits inside the reset product.
            hidden0 = _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 0 * M, units, unit_ok, PRECISION)
            hidden1 = _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 1 * M, units, unit_ok, PRECISION)
            hidden2 = _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 2 * M, units, unit_ok, PRECISION)
            hsaved = hgates_ptr + k * B * G
            _put(hsaved + 0 * M, rows, G, units, row_ok, unit_ok, hidden0)
            _put(hsaved + 1 * M, rows, G, units, row_ok, unit_ok, hidden1)
            _put(hsaved + 2 * M, rows, G, units, row_ok, unit_ok, hidden2)
            reset = tl.sigmoid(gate0 + hidden0)
            update = tl.sigmoid(gate1 + hidden1)
            candidate = _tanh(gate2 + reset * (hidden2 + _vector(bias_hn_ptr + k * M, units, unit_ok)))
            h_new = (1.0 - update) * candidate + update * h
        else:
            gate0 += _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 0 * M, units, unit_ok, PRECISION)
            gate1 += _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 1 * M, units, unit_ok, PRECISION)
            gate2 += _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 2 * M, units, unit_ok, PRECISION)
            gate3 += _matmul_rows(h_ptr + k * M, rows, STATE, row_ok, M, M_P, whh, G, 3 * M, units, unit_ok, PRECISION) + _vector(
                bias + 3 * M, units, unit_ok)
            _put(saved + 3 * M, rows, G, units, row_ok, unit_ok, gate3)
            c = _tile(c_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
            # tanh of the candidate gate as saved (each thread reads back what it wrote), loaded after the
            # sigmoids: with whole-tile dots, tanh of the sum in registers (or this reload bound to a name
            # before the sigmoids) aborted LLVM's SLP vectoriser on sm_90 for 50-unit modules (Triton 3.9,
            # BoUpSLP::scheduleBlock); the chunked dots avoid it too, and tests/test_triton_aot.py watches.
            c_new = tl.sigmoid(gate1) * c + tl.sigmoid(gate0) * _tanh(_tile(saved + 3 * M, rows, G, units, row_ok,
                                                                              unit_ok))
            h_new = tl.sigmoid(gate2) * _tanh(c_new)
            _put(c_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok, c_new)  # rewritten in pass 2
        _put(saved + 0 * M, rows, G, units, row_ok, unit_ok, gate0)
        _put(saved + 1 * M, rows, G, units, row_ok, unit_ok, gate1)
        _put(saved + 2 * M, rows, G, units, row_ok, unit_ok, gate2)
        _put(h_prop_ptr + k * B * M, rows, M, units, row_ok, unit_ok, h_new)
    tl.debug_barrier()

    # Pass 2, per module: competition (step 3), and what communication reads of it.
    QKV: tl.constexpr = H2 * (2 * D2 + V2)
    HEAD: tl.constexpr = 2 * D2 + V2
    keys2 = tl.arange(0, D2_P)
    key2_ok = keys2 < D2
    vals2 = tl.arange(0, V2_P)
    val2_ok = vals2 < V2
    for k in tl.range(N):
        if TOP_K == N:
            active = row_ok
        else:
            score = _rows(null_ptr + k * B, rows, 1, row_ok)
            beaten = tl.zeros((BLOCK_B,), dtype=tl.int32)
            for j in tl.range(N):  # j beats k with a lower score, or an equal one and a lower index
                other = _rows(null_ptr + j * B, rows, 1, row_ok)
                beaten += ((other < score) | ((other == score) & (j < k))).to(tl.int32)
            active = beaten < TOP_K
        _put_rows(active_ptr + k, rows, N, row_ok, active.to(tl.int8))
        h = _tile(h_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
        h_prop = _tile(h_prop_ptr + k * B * M, rows, M, units, row_ok, unit_ok)
        if HAS_COMM:
            h_read = tl.where(active[:, None], h_prop, h)
            for head in tl.range(H2):
                base = qkv_ptr + k * B * QKV + head * HEAD
                wqkv = wqkv_ptr + k * M * QKV
                q = _matmul(h_read, wqkv, QKV, units, unit_ok, head * HEAD, keys2, key2_ok, PRECISION)
                kk = _matmul(h_read, wqkv, QKV, units, unit_ok, head * HEAD + D2, keys2, key2_ok, PRECISION)
                v = _matmul(h_read, wqkv, QKV, units, unit_ok, head * HEAD + 2 * D2, vals2, val2_ok, PRECISION)
                _put(base, rows, QKV, keys2, row_ok, key2_ok, q)
                _put(base + D2, rows, QKV, keys2, row_ok, key2_ok, kk)
                _put(base + 2 * D2, rows, QKV, vals2, row_ok, val2_ok, v)
        else:
            # Step 6 without communication: inactive modules keep h and c exactly.
            _put(h_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok, tl.where(active[:, None], h_prop, h))
            if not IS_GRU:
                c = _tile(c_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
                c_prop = _tile(c_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
                _put(c_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok, tl.where(active[:, None], c_prop, c))
    tl.debug_barrier()

    # Pass 3, per module (with communication): read every module (step 5), then write back (step 6).
    if HAS_COMM:
        for i in tl.range(N):
            h = _tile(h_ptr + i * M, rows, STATE, units, row_ok, unit_ok)
            u = tl.zeros_like(h) + _vector(bout_ptr + i * 2 * M, units, unit_ok)
            g = tl.zeros_like(h) + _vector(bout_ptr + i * 2 * M + M, units, unit_ok)
            wout = wout_ptr + i * H2 * V2 * 2 * M
            for head in tl.range(H2):
                top = _comm_logit(qkv_ptr, i, 0, head, rows, row_ok, keys2, key2_ok, B, D2, QKV, HEAD)
                for j in tl.range(1, N):
                    top = tl.maximum(top, _comm_logit(qkv_ptr, i, j, head, rows, row_ok, keys2, key2_ok, B, D2, QKV, HEAD))
                total = tl.zeros_like(top)
                read = tl.zeros((BLOCK_B, V2_P), dtype=h.dtype)
                for j in tl.range(N):
                    e = tl.exp(_comm_logit(qkv_ptr, i, j, head, rows, row_ok, keys2, key2_ok, B, D2, QKV, HEAD) - top)
                    total += e
                    value = _tile(qkv_ptr + j * B * QKV + head * HEAD + 2 * D2, rows, QKV, vals2, row_ok, val2_ok)
                    keep = _comm_keep(keep_comm_ptr, i, j, head, rows, row_ok, B, N, H2, DROP_COMM)
                    read += (e * keep)[:, None] * value
                read = read / total[:, None]  # (BLOCK_B, V2_P)
                _put_rows(lse_ptr + i * B * H2 + head, rows, H2, row_ok, top + tl.log(total))
                _put(read_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok, read)
                vrows = head * V2 + vals2
                u += _matmul(read, wout, 2 * M, vrows, val2_ok, 0, units, unit_ok, PRECISION)
                g += _matmul(read, wout, 2 * M, vrows, val2_ok, M, units, unit_ok, PRECISION)
            active = _rows(active_ptr + i, rows, N, row_ok) != 0
            h_prop = _tile(h_prop_ptr + i * B * M, rows, M, units, row_ok, unit_ok)
            h_new = tl.where(active[:, None], h_prop + tl.sigmoid(g) * _tanh(u), h)
            _put(h_out_ptr + i * M, rows, STATE, units, row_ok, unit_ok, h_new)
            if not IS_GRU:
                c = _tile(c_ptr + i * M, rows, STATE, units, row_ok, unit_ok)
                c_prop = _tile(c_out_ptr + i * M, rows, STATE, units, row_ok, unit_ok)
                _put(c_out_ptr + i * M, rows, STATE, units, row_ok, unit_ok, tl.where(active[:, None], c_prop, c))


@triton.jit
def layer_step_backward(
    h_ptr, c_ptr, slots_ptr,  # the forward's inputs
    wq_ptr, wih_ptr, whh_ptr, bias_ptr, bias_hn_ptr, wqkv_ptr, wout_ptr, bout_ptr,
    keep_in_ptr, keep_comm_ptr,
    active_ptr, query_ptr, attended_ptr, gates_ptr, hgates_ptr, qkv_ptr, lse_ptr, read_ptr,  # what the forward saved
    dh_out_ptr, dc_out_ptr,  # (B, N*M) x2: gradients of the new state
    dh_ptr, dc_ptr, dslots_ptr,  # (B, N*M) x2, (B, S, H*D + H*V): gradients of the inputs
    dquery_ptr, dgates_ptr, dhgates_ptr, dqkv_ptr, dout_ptr,  # (N, B, ...): for the weights' gradients
    dread_ptr, delta_ptr, dattended_ptr, dlogit_ptr, wkept_ptr,  # scratch: (N,B,H2*V2), (N,B,H2), (N,B,H*V), (N,B,H,S) x2
    B,
    N: tl.constexpr, TOP_K: tl.constexpr, M: tl.constexpr, M_P: tl.constexpr,
    H: tl.constexpr, D: tl.constexpr, D_P: tl.constexpr, V: tl.constexpr, V_P: tl.constexpr, S: tl.constexpr,
    H2: tl.constexpr, D2: tl.constexpr, D2_P: tl.constexpr, V2: tl.constexpr, V2_P: tl.constexpr,
    IS_GRU: tl.constexpr, HAS_COMM: tl.constexpr, DROP_IN: tl.constexpr, DROP_COMM: tl.constexpr,
    BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    units = tl.arange(0, M_P)
    unit_ok = units < M
    keys = tl.arange(0, D_P)
    key_ok = keys < D
    vals = tl.arange(0, V_P)
    val_ok = vals < V
    keys2 = tl.arange(0, D2_P)
    key2_ok = keys2 < D2
    vals2 = tl.arange(0, V2_P)
    val2_ok = vals2 < V2
    STATE: tl.constexpr = N * M
    SLOT: tl.constexpr = H * D + H * V
    G: tl.constexpr = 3 * M if IS_GRU else 4 * M
    A: tl.constexpr = H * V
    QKV: tl.constexpr = H2 * (2 * D2 + V2)
    HEAD: tl.constexpr = 2 * D2 + V2

    if HAS_COMM:
        # Pass 1, per module: back through the gated update σ(g) tanh(u) and the output map to the read.
        for i in tl.range(N):
            active = _rows(active_ptr + i, rows, N, row_ok) != 0
            d_update = tl.where(active[:, None], _tile(dh_out_ptr + i * M, rows, STATE, units, row_ok, unit_ok), 0.0)
            u = tl.zeros((BLOCK_B, M_P), dtype=d_update.dtype) + _vector(bout_ptr + i * 2 * M, units, unit_ok)
            g = tl.zeros((BLOCK_B, M_P), dtype=d_update.dtype) + _vector(bout_ptr + i * 2 * M + M, units, unit_ok)
            wout = wout_ptr + i * H2 * V2 * 2 * M
            for head in tl.range(H2):
                read = _tile(read_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok)
                u += _matmul(read, wout, 2 * M, head * V2 + vals2, val2_ok, 0, units, unit_ok, PRECISION)
                g += _matmul(read, wout, 2 * M, head * V2 + vals2, val2_ok, M, units, unit_ok, PRECISION)
            tanh_u = _tanh(u)
            sigma_g = tl.sigmoid(g)
            d_u = d_update * sigma_g * (1.0 - tanh_u * tanh_u)
            d_g = d_update * tanh_u * sigma_g * (1.0 - sigma_g)
            _put(dout_ptr + i * B * 2 * M, rows, 2 * M, units, row_ok, unit_ok, d_u)
            _put(dout_ptr + i * B * 2 * M + M, rows, 2 * M, units, row_ok, unit_ok, d_g)
            tl.debug_barrier()  # the dots below read them back in column chunks, from other threads
            d_out = dout_ptr + i * B * 2 * M
            for head in tl.range(H2):
                vrows = head * V2 + vals2
                d_read = _matmul_t_rows(d_out, rows, 2 * M, row_ok, M, M_P, wout, 2 * M, vrows, val2_ok, 0, PRECISION)
                d_read += _matmul_t_rows(d_out + M, rows, 2 * M, row_ok, M, M_P, wout, 2 * M, vrows, val2_ok, M,
                                         PRECISION)
                read = _tile(read_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok)
                _put(dread_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok, d_read)
                # Σ_j p_ij dL/dp_ij = d_read . read: the softmax's backward needs only this per row.
                _put_rows(delta_ptr + i * B * H2 + head, rows, H2, row_ok, tl.sum(d_read * read, axis=1))
        tl.debug_barrier()

        # Pass 2: the attention among modules. Queries of module i (loop over the modules it reads),
        # then keys and values of module j (loop over its readers); probabilities are recomputed.
        for i in tl.range(N):
            for head in tl.range(H2):
                d_read = _tile(dread_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok)
                delta = _rows(delta_ptr + i * B * H2 + head, rows, H2, row_ok)
                lse = _rows(lse_ptr + i * B * H2 + head, rows, H2, row_ok)
                d_query = tl.zeros((BLOCK_B, D2_P), dtype=d_read.dtype)
                for j in tl.range(N):
                    p = tl.exp(_comm_logit(qkv_ptr, i, j, head, rows, row_ok, keys2, key2_ok, B, D2, QKV, HEAD) - lse)
                    keep = _comm_keep(keep_comm_ptr, i, j, head, rows, row_ok, B, N, H2, DROP_COMM)
                    value = _tile(qkv_ptr + j * B * QKV + head * HEAD + 2 * D2, rows, QKV, vals2, row_ok, val2_ok)
                    d_logit = p * (keep * tl.sum(d_read * value, axis=1) - delta)
                    key = _tile(qkv_ptr + j * B * QKV + head * HEAD + D2, rows, QKV, keys2, row_ok, key2_ok)
                    d_query += d_logit[:, None] * key * _rsqrt(D2, key)
                _put(dqkv_ptr + i * B * QKV + head * HEAD, rows, QKV, keys2, row_ok, key2_ok, d_query)
        for j in tl.range(N):
            for head in tl.range(H2):
                value = _tile(qkv_ptr + j * B * QKV + head * HEAD + 2 * D2, rows, QKV, vals2, row_ok, val2_ok)
                d_key = tl.zeros((BLOCK_B, D2_P), dtype=value.dtype)
                d_value = tl.zeros((BLOCK_B, V2_P), dtype=value.dtype)
                for i in tl.range(N):
                    d_read = _tile(dread_ptr + i * B * H2 * V2 + head * V2, rows, H2 * V2, vals2, row_ok, val2_ok)
                    delta = _rows(delta_ptr + i * B * H2 + head, rows, H2, row_ok)
                    lse = _rows(lse_ptr + i * B * H2 + head, rows, H2, row_ok)
                    p = tl.exp(_comm_logit(qkv_ptr, i, j, head, rows, row_ok, keys2, key2_ok, B, D2, QKV, HEAD) - lse)
                    keep = _comm_keep(keep_comm_ptr, i, j, head, rows, row_ok, B, N, H2, DROP_COMM)
                    d_logit = p * (keep * tl.sum(d_read * value, axis=1) - delta)
                    query = _tile(qkv_ptr + i * B * QKV + head * HEAD, rows, QKV, keys2, row_ok, key2_ok)
                    d_key += d_logit[:, None] * query * _rsqrt(D2, query)
                    d_value += (p * keep)[:, None] * d_read
                _put(dqkv_ptr + j * B * QKV + head * HEAD + D2, rows, QKV, keys2, row_ok, key2_ok, d_key)
                _put(dqkv_ptr + j * B * QKV + head * HEAD + 2 * D2, rows, QKV, vals2, row_ok, val2_ok, d_value)
        tl.debug_barrier()

    # Pass 3, per module: write-back, the cell, and the input attention's query.
    for k in tl.range(N):
        active = _rows(active_ptr + k, rows, N, row_ok) != 0
        dh_new = _tile(dh_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
        d_proposal = dh_new
        if HAS_COMM:
            # What communication read of an active module flows back into its proposal (not into an inactive h).
            wqkv = wqkv_ptr + k * M * QKV
            for head in tl.range(H2):
                base = dqkv_ptr + k * B * QKV + head * HEAD
                d_proposal += _matmul_t(_tile(base, rows, QKV, keys2, row_ok, key2_ok), wqkv, QKV, units, unit_ok,
                                        head * HEAD, keys2, key2_ok, PRECISION)
                d_proposal += _matmul_t(_tile(base + D2, rows, QKV, keys2, row_ok, key2_ok), wqkv, QKV, units, unit_ok,
                                        head * HEAD + D2, keys2, key2_ok, PRECISION)
                d_proposal += _matmul_t(_tile(base + 2 * D2, rows, QKV, vals2, row_ok, val2_ok), wqkv, QKV, units,
                                        unit_ok, head * HEAD + 2 * D2, vals2, val2_ok, PRECISION)
        d_proposal = tl.where(active[:, None], d_proposal, 0.0)
        dh = tl.where(active[:, None], 0.0, dh_new)  # inactive modules pass h through unchanged
        h = _tile(h_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
        saved = gates_ptr + k * B * G
        gate0 = _tile(saved + 0 * M, rows, G, units, row_ok, unit_ok)
        gate1 = _tile(saved + 1 * M, rows, G, units, row_ok, unit_ok)
        gate2 = _tile(saved + 2 * M, rows, G, units, row_ok, unit_ok)
        dsaved = dgates_ptr + k * B * G
        if IS_GRU:
            hsaved = hgates_ptr + k * B * G
            hidden0 = _tile(hsaved + 0 * M, rows, G, units, row_ok, unit_ok)
            hidden1 = _tile(hsaved + 1 * M, rows, G, units, row_ok, unit_ok)
            hidden2 = _tile(hsaved + 2 * M, rows, G, units, row_ok, unit_ok) + _vector(bias_hn_ptr + k * M, units,
                                                                                       unit_ok)
            reset = tl.sigmoid(gate0 + hidden0)
            update = tl.sigmoid(gate1 + hidden1)
            candidate = _tanh(gate2 + reset * hidden2)
            dh += d_proposal * update
            d_candidate = d_proposal * (1.0 - update) * (1.0 - candidate * candidate)  # through tanh
            d_reset = d_candidate * hidden2 * reset * (1.0 - reset)
            d_update = d_proposal * (h - candidate) * update * (1.0 - update)
            d_in0, d_in1, d_in2, d_in3 = d_reset, d_update, d_candidate, d_candidate
            d_hidden2 = d_candidate * reset
            dhsaved = dhgates_ptr + k * B * G
            _put(dhsaved + 0 * M, rows, G, units, row_ok, unit_ok, d_reset)
            _put(dhsaved + 1 * M, rows, G, units, row_ok, unit_ok, d_update)
            _put(dhsaved + 2 * M, rows, G, units, row_ok, unit_ok, d_hidden2)
            _put(dsaved + 0 * M, rows, G, units, row_ok, unit_ok, d_in0)
            _put(dsaved + 1 * M, rows, G, units, row_ok, unit_ok, d_in1)
            _put(dsaved + 2 * M, rows, G, units, row_ok, unit_ok, d_in2)
            tl.debug_barrier()  # the dots below read them back in column chunks, from other threads
            whh = whh_ptr + k * M * G
            dh += _matmul_t_rows(dhsaved + 0 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 0 * M, PRECISION)
            dh += _matmul_t_rows(dhsaved + 1 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 1 * M, PRECISION)
            dh += _matmul_t_rows(dhsaved + 2 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 2 * M, PRECISION)
        else:
            gate3 = _tile(saved + 3 * M, rows, G, units, row_ok, unit_ok)
            c = _tile(c_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
            dc_new = _tile(dc_out_ptr + k * M, rows, STATE, units, row_ok, unit_ok)
            i_gate, f_gate, o_gate, g_gate = tl.sigmoid(gate0), tl.sigmoid(gate1), tl.sigmoid(gate2), _tanh(gate3)
            tanh_c = _tanh(f_gate * c + i_gate * g_gate)
            d_c = tl.where(active[:, None], dc_new, 0.0) + d_proposal * o_gate * (1.0 - tanh_c * tanh_c)
            d_in0 = d_c * g_gate * i_gate * (1.0 - i_gate)
            d_in1 = d_c * c * f_gate * (1.0 - f_gate)
            d_in2 = d_proposal * tanh_c * o_gate * (1.0 - o_gate)
            d_in3 = d_c * i_gate * (1.0 - g_gate * g_gate)
            _put(dc_ptr + k * M, rows, STATE, units, row_ok, unit_ok, d_c * f_gate + tl.where(active[:, None], 0.0, dc_new))
            _put(dsaved + 0 * M, rows, G, units, row_ok, unit_ok, d_in0)
            _put(dsaved + 1 * M, rows, G, units, row_ok, unit_ok, d_in1)
            _put(dsaved + 2 * M, rows, G, units, row_ok, unit_ok, d_in2)
            _put(dsaved + 3 * M, rows, G, units, row_ok, unit_ok, d_in3)
            tl.debug_barrier()  # the dots below read them back in column chunks, from other threads
            whh = whh_ptr + k * M * G
            dh += _matmul_t_rows(dsaved + 0 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 0 * M, PRECISION)
            dh += _matmul_t_rows(dsaved + 1 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 1 * M, PRECISION)
            dh += _matmul_t_rows(dsaved + 2 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 2 * M, PRECISION)
            dh += _matmul_t_rows(dsaved + 3 * M, rows, G, row_ok, M, M_P, whh, G, units, unit_ok, 3 * M, PRECISION)

        # Input attention: the attended input's gradient, per head, back through the slot softmax to the query.
        wih = wih_ptr + k * A * G
        for head in tl.range(H):
            arows = head * V + vals
            d_attended = _matmul_t_rows(dsaved, rows, G, row_ok, M, M_P, wih, G, arows, val_ok, 0 * M, PRECISION)
            d_attended += _matmul_t_rows(dsaved + 1 * M, rows, G, row_ok, M, M_P, wih, G, arows, val_ok, 1 * M,
                                         PRECISION)
            d_attended += _matmul_t_rows(dsaved + 2 * M, rows, G, row_ok, M, M_P, wih, G, arows, val_ok, 2 * M,
                                         PRECISION)
            if not IS_GRU:
                d_attended += _matmul_t_rows(dsaved + 3 * M, rows, G, row_ok, M, M_P, wih, G, arows, val_ok, 3 * M,
                                             PRECISION)
            _put(dattended_ptr + k * B * A + head * V, rows, A, vals, row_ok, val_ok, d_attended)
            query = _tile(query_ptr + k * B * H * D + head * D, rows, H * D, keys, row_ok, key_ok)
            _, p0, p1, key0, key1 = _slot_attention(query, slots_ptr, rows, row_ok, head, keys, key_ok, H, D, V, S)
            value0 = _tile(slots_ptr + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok)
            w0 = _kept(p0, keep_in_ptr, k, head, 0, rows, row_ok, B, H, S, DROP_IN)
            dp0 = _kept(tl.sum(d_attended * value0, axis=1), keep_in_ptr, k, head, 0, rows, row_ok, B, H, S, DROP_IN)
            if S == 2:
                value1 = _tile(slots_ptr + SLOT + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok)
                w1 = _kept(p1, keep_in_ptr, k, head, 1, rows, row_ok, B, H, S, DROP_IN)
                dp1 = _kept(tl.sum(d_attended * value1, axis=1), keep_in_ptr, k, head, 1, rows, row_ok, B, H, S, DROP_IN)
            else:
                w1 = tl.zeros_like(p0)
                dp1 = tl.zeros_like(p0)
            mean = p0 * dp0 + p1 * dp1  # the null slot's probability has no gradient of its own
            d_logit0 = p0 * (dp0 - mean)
            d_logit1 = p1 * (dp1 - mean)
            d_query = (d_logit0[:, None] * key0 + d_logit1[:, None] * key1) * _rsqrt(D, key0)
            _put(dquery_ptr + k * B * H * D + head * D, rows, H * D, keys, row_ok, key_ok, d_query)
            dh += _matmul_t(d_query, wq_ptr + k * M * H * D, H * D, units, unit_ok, head * D, keys, key_ok, PRECISION)
            scratch = (k * B * H + head) * S
            _put_rows(dlogit_ptr + scratch, rows, H * S, row_ok, d_logit0)
            _put_rows(wkept_ptr + scratch, rows, H * S, row_ok, w0)
            if S == 2:
                _put_rows(dlogit_ptr + scratch + 1, rows, H * S, row_ok, d_logit1)
                _put_rows(wkept_ptr + scratch + 1, rows, H * S, row_ok, w1)
        _put(dh_ptr + k * M, rows, STATE, units, row_ok, unit_ok, dh)
    tl.debug_barrier()

    # Pass 4, per slot and head: the slots' keys and values, summed over the modules that read them.
    for head in tl.range(H):
        for slot in tl.range(S):
            d_key = tl.zeros_like(_tile(slots_ptr + slot * SLOT + head * D, rows, S * SLOT, keys, row_ok, key_ok))
            d_value = tl.zeros_like(_tile(slots_ptr + slot * SLOT + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok))
            for k in tl.range(N):
                scratch = (k * B * H + head) * S + slot
                query = _tile(query_ptr + k * B * H * D + head * D, rows, H * D, keys, row_ok, key_ok)
                d_key += _rows(dlogit_ptr + scratch, rows, H * S, row_ok)[:, None] * query * _rsqrt(D, query)
                d_attended = _tile(dattended_ptr + k * B * A + head * V, rows, A, vals, row_ok, val_ok)
                d_value += _rows(wkept_ptr + scratch, rows, H * S, row_ok)[:, None] * d_attended
            _put(dslots_ptr + slot * SLOT + head * D, rows, S * SLOT, keys, row_ok, key_ok, d_key)
            _put(dslots_ptr + slot * SLOT + H * D + head * V, rows, S * SLOT, vals, row_ok, val_ok, d_value)
