"""Language modelling: predict the next token of a text, word or character level.

The model follows the usual word-language-model conventions (pytorch/examples): embedding,
dropout, the recurrent core, dropout, a linear readout to the vocabulary (optionally tied to
the embedding), trained with truncated back-propagation through time: the text is cut into
``B`` contiguous streams, read ``seq_len`` steps at a time, and the recurrent state is carried
from one window to the next (detached: :func:`detach_state`; the core's own state operations,
whatever its kind, are in :mod:`brims_experiments.tasks.cores`).

Dimension legend: B = streams (batch), T = window length, V = vocabulary, E = embedding size,
H = core output size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from brims_experiments.tasks.cores import (
    CoreConfig,
    RecurrentCore,
    detach_state,
    state_from_plain,
    state_to,
    state_to_plain,
)

# The carried state's operations are the core's (any kind); these serve the trainer, which holds
# the state between batches and in checkpoints without the model at hand.
__all__ = ["LanguageModel", "detach_state", "move_state", "sample", "state_from_plain", "state_to_plain"]


class LanguageModel(nn.Module):
    """``tokens (B, T)`` → logits ``(B, T, V)``, carrying the core's state.

    Args:
        tie: share the readout's weight with the embedding (needs ``H == E``).
    """

    def __init__(self, core: CoreConfig, vocab_size: int, embedding_size: int, dropout: float, tie: bool) -> None:
        super().__init__()
        if tie and core.hidden_size != embedding_size:
            raise ValueError(f"model.tie_weights needs the core's output size ({core.hidden_size}) to equal "
                             f"model.embedding_size ({embedding_size})")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.dropout = nn.Dropout(dropout)
        self.core = RecurrentCore(core, embedding_size)
        self.readout = nn.Linear(core.hidden_size, vocab_size)
        if tie:
            self.readout.weight = self.embedding.weight

    def forward(self, tokens: Tensor, state: Any = None, *, return_diagnostics: bool = False):
        """``(logits (B, T, V), state)``, plus the diagnostics when asked."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got {tuple(tokens.shape)}")
        embedded = self.dropout(self.embedding(tokens.t()))  # (T, B, E)
        output, state, diagnostics = self.core(embedded, state, return_diagnostics=return_diagnostics)  # (T, B, H)
        logits = self.readout(self.dropout(output)).transpose(0, 1)  # (B, T, V)
        return (logits, state, diagnostics) if return_diagnostics else (logits, state)


def move_state(state: Any, device: torch.device) -> Any:
    """The carried state on ``device`` (a resumed run restores it on the CPU)."""
    return state_to(state, device)


@torch.no_grad()
def sample(model: LanguageModel, prompt: Tensor, length: int, temperature: float,
           generator: torch.Generator) -> Tensor:
    """``length`` token ids drawn one at a time after reading ``prompt (P,)``.

    ``temperature`` scales the logits before the softmax (lower: more conservative).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError("the prompt must hold at least one token")
    model.eval()
    device = next(model.parameters()).device
    logits, state = model(prompt.view(1, -1).to(device))  # (1, P, V)
    drawn = []
    for _ in range(length):
        probabilities = torch.softmax(logits[0, -1].float() / temperature, dim=-1).cpu()  # (V,)
        token = torch.multinomial(probabilities, 1, generator=generator)  # (1,)
        drawn.append(int(token))
        logits, state = model(token.view(1, 1).to(device), state)  # (1, 1, V)
    return torch.tensor(drawn)

