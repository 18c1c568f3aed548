"""One BRIMs layer, one time step: the paper's steps in order (docs/design.md, section 1).

Dimension legend: B = batch, n = modules, m = units per module, S = non-null slots (1 or 2),
A = attended input per module, F = features of the layer below, F' = of the layer above.

The layer's state enters and leaves as ``(B, n*m)`` (module ``k`` owns units ``k*m ..
(k+1)*m - 1``); inside the step it is module-first, ``(n, B, m)``, the layout of the grouped
matmuls. Autograd differentiates all of it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from brims.attention import Communication, InputAttention
from brims.config import BRIMsConfig
from brims.grouped import make_cell


class LayerStep(NamedTuple):
    """What one step of a layer produces."""

    h: Tensor  # (B, n*m)
    c: Tensor  # (B, n*m); GRU: the same tensor as h
    active: Tensor  # (B, n) bool: the modules that updated
    attention: Tensor  # (B, n, 1 + S): head-averaged input attention, null slot first


def select_top_k(null_score: Tensor, k: int) -> Tensor:
    """Bool mask ``(n, B)``: per example, the ``k`` modules that attend least to null.

    A hard choice: no gradient flows through it. A module's rank is the number of modules that
    beat it (a lower score, or an equal score and a lower index); the ``k`` ranked first are
    active. Ties thus go to the lower module index on every device (``topk`` breaks ties
    differently on CPU and CUDA, and a zero state makes every module's null score equal at the
    first step). Comparing all pairs costs ``n^2 B`` comparisons, nothing for a handful of
    modules, and compiles into one fused kernel where a sort and a scatter would be two library
    calls per step.
    """
    n = null_score.shape[0]
    if k == n:
        return torch.ones_like(null_score, dtype=torch.bool)
    score = null_score.detach()
    other, this = score.unsqueeze(1), score.unsqueeze(0)  # (n_other, 1, B), (1, n_this, B)
    index = torch.arange(n, device=score.device)
    earlier = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(-1)  # (n_other, n_this, 1)
    beaten_by = (other < this) | ((other == this) & earlier)  # (n_other, n_this, B)
    return beaten_by.sum(dim=0) < k  # (n, B)


class BRIMsLayer(nn.Module):
    """Layer ``l`` of BRIMs: ``n`` modules, ``k`` of which update at each step.

    1. **Slots**: ``[null, bottom-up h^{l-1}_t, top-down h^{l+1}_{t-1}]`` (no top-down for the
       top layer, or with ``top_down=False``).
    2. **Input attention**: each module queries the slots from its own ``h_{t-1}`` and gets
       ``a_k`` and its attention on null (averaged over heads).
    3. **Competition**: the ``k`` modules that attend least to null are active.
    4. **Independent dynamics**: each module's own LSTM/GRU proposes ``(h̃, c̃)`` from ``a_k``
       (normalised first with ``attended_norm``, our option).
    5. **Communication**: modules read ``h̃`` through attention, and active modules add the
       gated read to their proposal.
    6. **Write-back**: active modules take the new state; inactive ones keep ``h, c`` bit for bit.

    Note (departure from the released code): communication reads the state inactive modules
    hold, ``h_{t-1}`` (the RIMs paper's equation), not their discarded proposals; like the
    released code's ``blocked_grad``, no gradient flows through that read into inactive modules.

    This is the torch backend; ``backend="triton"`` builds its subclass
    :class:`brims.backends.fused_layer.FusedBRIMsLayer`, the same step in fused kernels.
    """

    def __init__(self, config: BRIMsConfig, index: int) -> None:
        super().__init__()
        self.num_modules = config.num_modules[index]
        self.top_k = config.top_k[index]
        self.is_gru = config.cell == "gru"
        module_size = config.module_size(index)
        attended_size = config.input_value_factor * module_size
        bottom_up_size = config.input_size if index == 0 else config.hidden_sizes[index - 1]
        reads_top_down = config.top_down and index < config.num_layers - 1
        self.input_attention = InputAttention(
            self.num_modules,
            module_size,
            bottom_up_size,
            config.hidden_sizes[index + 1] if reads_top_down else None,
            config.input_heads,
            config.input_key_size,
            attended_size,
            config.attention_dropout,
        )
        # With attended_norm (not in the papers or the authors' code; see BRIMsConfig), a_k is
        # normalised over its features before the cell reads it; no parameters, so the state_dict
        # is the same either way.
        self.attended_norm = nn.LayerNorm(attended_size, elementwise_affine=False) if config.attended_norm else nn.Identity()
        self.cell = make_cell(config.cell, self.num_modules, attended_size, module_size)
        self.communication = None
        if config.communication:
            self.communication = Communication(
                self.num_modules,
                module_size,
                config.comm_heads,
                config.comm_key_size,
                config.comm_value_size,
                config.attention_dropout,
            )

    @property
    def reads_top_down(self) -> bool:
        return self.input_attention.top_down is not None

    def forward(self, h: Tensor, c: Tensor, bottom_up: Tensor, top_down: Tensor | None) -> LayerStep:
        """One step from the state ``h, c (B, n*m)``, the layer below's ``h^{l-1}_t (B, F)`` and the
        layer above's ``h^{l+1}_{t-1} (B, F')`` (None when the layer reads no top-down)."""
        batch = h.shape[0]
        h = h.reshape(batch, self.num_modules, -1).transpose(0, 1)  # (n, B, m); a view when contiguous
        c = c.reshape(batch, self.num_modules, -1).transpose(0, 1)  # (n, B, m)

        # 1-2. Input attention over the slots [null, bottom-up, top-down].
        attended, attention = self.input_attention(h, bottom_up, top_down)  # (n, B, A), (n, B, 1 + S)
        return self.update(h, c, attended, attention)

    def update(self, h: Tensor, c: Tensor, attended: Tensor, attention: Tensor) -> LayerStep:
        """Steps 3-6 from the input attention's result: the module-first state ``h, c (n, B, m)``, the
        attended input ``(n, B, A)`` and the attention ``(n, B, 1 + S)``, null slot first."""
        batch = h.shape[1]

        # 3. Competition: a hard, per-example choice that carries no gradient.
        active = select_top_k(attention[..., 0], self.top_k)  # (n, B)
        keep = active.unsqueeze(-1)  # (n, B, 1)

        # 4. Independent dynamics: every module's own cell (the inactive modules' proposals are dropped).
        h_proposed, c_proposed = self.cell(self.attended_norm(attended), h, c)  # (n, B, m) each

        # 5. Communication: read h̃ (the inactive modules' h_{t-1}, detached) and add to the proposals.
        if self.communication is not None:
            h_read = torch.where(keep, h_proposed, h.detach())  # (n, B, m)
            h_proposed = h_proposed + self.communication(h_read)

        # 6. Write-back: inactive modules keep h and c exactly.
        h_new = torch.where(keep, h_proposed, h).transpose(0, 1).reshape(batch, -1)  # (B, n*m)
        c_new = h_new if self.is_gru else torch.where(keep, c_proposed, c).transpose(0, 1).reshape(batch, -1)
        return LayerStep(h_new, c_new, active.t(), attention.transpose(0, 1))
