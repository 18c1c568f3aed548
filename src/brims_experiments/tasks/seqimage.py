"""Sequential image classification: read an image one pixel per step, classify after the last.

The released BRIMs/RIMs protocol (the README for the data):

- MNIST and Fashion-MNIST: nearest-resize to ``S x S``, binarise (intensity >= 128 is 1),
  embed each pixel as a token (``Embedding(2, E)``); train at 14x14 (``T = 196``), test at
  16, 19 and 24 (``T = 256, 361, 576``: longer sequences than any seen in training).
- CIFAR-10: the three channel intensities of a pixel are tokens ``0..255``, each with its own
  embedding table, summed; train at 16x16, test at 19, 24 and 32.
- Noise robustness: Gaussian noise on intensities (before tokenising) and, for binarised
  input, random flips of the binary pixels, at named levels.

Dimension legend: N = images, B = batch, S = side in pixels, T = S*S steps, C = channels,
E = embedding size, H = core output size, K = classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims.cell import BRIMsDiagnostics
from brims_experiments.tasks.cores import CoreConfig, RecurrentCore

BINARY_THRESHOLD = 128
NOISE_KINDS = ("gaussian", "flip")


@dataclass(frozen=True)
class Noise:
    """A corruption of test images: ``gaussian`` (std on ``[0, 1]`` intensities) or ``flip``
    (probability that a binarised pixel is inverted)."""

    kind: str
    level: float

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if not (self.level >= 0) or (self.kind == "flip" and self.level > 1):
            raise ValueError(f"noise level for {self.kind} must be in {'[0, 1]' if self.kind == 'flip' else '[0, inf)'}, "
                             f"got {self.level!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.level:g}"

    @classmethod
    def parse(cls, text: str) -> Noise:
        """``"gaussian-0.3"`` → ``Noise("gaussian", 0.3)``."""
        kind, _, level = str(text).rpartition("-")
        try:
            return cls(kind, float(level))
        except ValueError as error:
            raise ValueError(f"noise {text!r}: expected '<kind>-<level>' with kind in {NOISE_KINDS} ({error})") from None


def resize_nearest(images: Tensor, size: int) -> Tensor:
    """``(N, H, W, C)`` uint8 → ``(N, size, size, C)`` uint8 by nearest-neighbour sampling."""
    if size < 1:
        raise ValueError(f"resolution must be at least 1, got {size}")
    if images.shape[1] == size and images.shape[2] == size:
        return images
    planar = images.permute(0, 3, 1, 2)  # (N, C, H, W)
    resized = F.interpolate(planar.float(), size=(size, size), mode="nearest")  # (N, C, S, S)
    return resized.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (N, S, S, C)


def add_gaussian_noise(images: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """uint8 images plus ``N(0, std)`` on the ``[0, 1]`` intensity scale, clipped, re-quantised."""
    noise = torch.randn(images.shape, generator=generator) * (std * 255.0)
    return (images.float() + noise).clamp_(0, 255).round_().to(torch.uint8)


def tokenize(images: Tensor, binarize: bool) -> Tensor:
    """``(N, S, S, C)`` uint8 → tokens ``(N, S*S, C)`` uint8, row-major pixel order."""
    n, s, _, c = images.shape
    tokens = images.reshape(n, s * s, c)  # (N, T, C)
    return (tokens >= BINARY_THRESHOLD).to(torch.uint8) if binarize else tokens.clone()


def make_sequences(
    images: Tensor, size: int, binarize: bool, noise: Noise | None = None, seed: int = 0
) -> Tensor:
    """Resize, corrupt (optionally, seeded) and tokenise: ``(N, H, W, C)`` → ``(N, T, C)`` uint8."""
    resized = resize_nearest(images, size)  # (N, S, S, C)
    generator = torch.Generator().manual_seed(seed)
    if noise is not None and noise.kind == "gaussian":
        resized = add_gaussian_noise(resized, noise.level, generator)
    tokens = tokenize(resized, binarize)  # (N, T, C)
    if noise is not None and noise.kind == "flip":
        if not binarize:
            raise ValueError("flip noise applies to binarised input only (mnist, fashion-mnist)")
        flips = torch.rand(tokens.shape, generator=generator) < noise.level
        tokens = tokens ^ flips.to(torch.uint8)
    return tokens


class SequenceClassifier(nn.Module):
    """Pixel tokens → per-channel embeddings (summed) → recurrent core → last step → classes.

    ``forward(tokens (B, T, C))`` returns logits ``(B, K)``; with ``return_diagnostics`` also
    the modular core's :class:`brims.BRIMsDiagnostics`.
    """

    def __init__(self, core: CoreConfig, channels: int, vocab: int, embedding_size: int, classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.vocab = vocab
        self.embeddings = nn.ModuleList(nn.Embedding(vocab, embedding_size) for _ in range(channels))
        self.core = RecurrentCore(core, embedding_size)
        self.readout = nn.Linear(core.hidden_size, classes)

    def forward(self, tokens: Tensor, *, return_diagnostics: bool = False) -> Tensor | tuple[Tensor, BRIMsDiagnostics]:
        if tokens.dim() != 3 or tokens.shape[-1] != self.channels:
            raise ValueError(f"tokens must be (B, T, {self.channels}), got {tuple(tokens.shape)}")
        steps = tokens.transpose(0, 1).long()  # (T, B, C)
        embedded = sum(table(steps[..., c]) for c, table in enumerate(self.embeddings))  # (T, B, E)
        output, _, diagnostics = self.core(embedded, return_diagnostics=return_diagnostics)  # (T, B, H)
        logits = self.readout(output[-1])  # (B, K)
        return (logits, diagnostics) if return_diagnostics else logits
