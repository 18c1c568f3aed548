"""A recurrent core between a linear input projection and a linear readout.

For generated tasks whose inputs are feature vectors (one-hot tokens of the copying task, the
value/marker pairs of the adding task): ``(B, T, F) -> (B, T, K)`` read out at every step, or
``(B, K)`` read out after the last step.
"""

from __future__ import annotations

from torch import Tensor, nn

from brims.cell import BRIMsDiagnostics
from brims_experiments.tasks.cores import CoreConfig, RecurrentCore


class SequenceModel(nn.Module):
    """``Linear(F, E)`` → core → ``Linear(H, K)``; ``every_step`` picks the readout."""

    def __init__(self, core: CoreConfig, input_size: int, embedding_size: int, output_size: int,
                 every_step: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.every_step = every_step
        self.project = nn.Linear(input_size, embedding_size)
        self.core = RecurrentCore(core, embedding_size)
        self.readout = nn.Linear(core.hidden_size, output_size)

    def forward(self, inputs: Tensor, *, return_diagnostics: bool = False) -> Tensor | tuple[Tensor, BRIMsDiagnostics]:
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(f"inputs must be (B, T, {self.input_size}), got {tuple(inputs.shape)}")
        steps = self.project(inputs.transpose(0, 1))  # (T, B, E)
        output, _, diagnostics = self.core(steps, return_diagnostics=return_diagnostics)  # (T, B, H)
        if self.every_step:
            result = self.readout(output).transpose(0, 1)  # (B, T, K)
        else:
            result = self.readout(output[-1])  # (B, K)
        return (result, diagnostics) if return_diagnostics else result
