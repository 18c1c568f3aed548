"""Language modelling: predict the next token of a text, word or character level.

The model follows the usual word-language-model conventions (pytorch/examples): embedding,
dropout, the recurrent core, dropout, a linear readout to the vocabulary (optionally tied to
the embedding), trained with truncated back-propagation through time: the text is cut into
``B`` contiguous streams, read ``seq_len`` steps at a time, and the recurrent state is carried
from one window to the next (detached).

Dimension legend: B = streams (batch), T = window length, V = vocabulary, E = embedding size,
H = core output size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from brims.cell import BRIMsState
from brims_experiments.tasks.cores import CoreConfig, RecurrentCore


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


def detach_state(state: Any) -> Any:
    """The state with its history cut (truncated back-propagation through time)."""
    if state is None:
        return None
    if isinstance(state, BRIMsState):
        return state.detach()
    return tuple(t.detach() for t in state)  # nn.LSTM's (h, c)


def move_state(state: Any, device: torch.device) -> Any:
    """The carried state on ``device`` (a resumed run restores it on the CPU)."""
    if state is None:
        return None
    if isinstance(state, BRIMsState):
        return BRIMsState(tuple(t.to(device) for t in state.h), tuple(t.to(device) for t in state.c))
    return tuple(t.to(device) for t in state)


def state_to_plain(state: Any) -> dict[str, list[Tensor]] | None:
    """A carried state as plain lists of tensors (checkpoints load with ``weights_only=True``)."""
    if state is None:
        return None
    if isinstance(state, BRIMsState):
        return {"kind": "brims", "h": list(state.h), "c": list(state.c)}
    return {"kind": "lstm", "h": [state[0]], "c": [state[1]]}


def state_from_plain(plain: dict[str, Any] | None) -> Any:
    if plain is None:
        return None
    if plain["kind"] == "brims":
        return BRIMsState(tuple(plain["h"]), tuple(plain["c"]))
    return plain["h"][0], plain["c"][0]


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

