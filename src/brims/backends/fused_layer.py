"""The layer of the Triton backend: :class:`~brims.layer.BRIMsLayer` whose step runs in the fused kernels.

:class:`brims.cell.BRIMsCell` builds it in place of ``BRIMsLayer`` when
``config.backend == "triton"``: the backend is chosen once, at construction, and the torch
layer's step has no branch for it. It has the same submodules and parameters (the same
``state_dict``), so weights move between the backends unchanged.

Dimension legend: B = batch, N = modules, S = non-null slots, H / H2 = heads of the input
attention / of communication.
"""

from __future__ import annotations

from torch import Tensor

from brims.attention import dropout_keep
from brims.backends.fused import StepSizes, StepWeights, fused_step
from brims.config import BRIMsConfig
from brims.layer import BRIMsLayer, LayerStep


class FusedBRIMsLayer(BRIMsLayer):
    """:class:`~brims.layer.BRIMsLayer`'s step through :func:`brims.backends.fused.fused_step`.

    The slot projections stay ``nn.Linear`` calls (autograd carries their gradient and the layers
    below); the dropout keep masks are drawn with :func:`brims.attention.dropout_keep` before the
    kernel, input attention's then communication's, as the torch backend draws them, so under one
    seed both backends drop the same entries.
    """

    def __init__(self, config: BRIMsConfig, index: int) -> None:
        super().__init__(config, index)
        self.sizes = StepSizes.of(config, index)

    def forward(self, h: Tensor, c: Tensor, bottom_up: Tensor, top_down: Tensor | None) -> LayerStep:
        """One step from ``h, c (B, N*M)``, ``bottom_up (B, F)`` and ``top_down (B, F')`` (or None)."""
        sizes, batch = self.sizes, h.shape[0]
        slots = self.input_attention.slots(bottom_up, top_down).to(h.dtype)  # (B, S, H*D + H*V)
        dropout = self.input_attention.dropout
        drop = self.training and dropout > 0
        keep_in = dropout_keep((sizes.N, batch, sizes.H, sizes.S), dropout, slots) if drop else None
        keep_comm = dropout_keep((sizes.N, sizes.N, batch, sizes.H2), dropout, slots) if drop and sizes.HAS_COMM else None
        return LayerStep(*fused_step(sizes, self.step_weights(), h, c, slots, keep_in, keep_comm))

    def step_weights(self) -> StepWeights:
        """The layer's current weight tensors, in the order the kernels take them."""
        cell, communication = self.cell, self.communication
        gru = self.is_gru
        return StepWeights(
            query=self.input_attention.query.weight,
            weight_ih=cell.weight_ih,
            weight_hh=cell.weight_hh,
            bias=cell.bias_ih if gru else cell.bias,
            bias_hn=cell.bias_hn if gru else None,
            comm_qkv=communication.qkv.weight if communication is not None else None,
            comm_out=communication.out.weight if communication is not None else None,
            comm_out_bias=communication.out.bias if communication is not None else None,
        )
