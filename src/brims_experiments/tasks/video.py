"""Video prediction: a convolutional encoder per frame, the recurrent core, a transposed-
convolution decoder that predicts the next frame (the RIMs/BRIMs bouncing-balls experiment).

At step ``t`` the model reads a frame ``x_t`` and predicts frame ``t+1`` as per-pixel
Bernoulli logits ``y_t``:

    e_t = Enc(x_t),   h_t = Core(e_t, h_{t-1}),   y_t = Dec(h_t)

The first ``teacher_frames`` inputs are the true frames (teacher forcing); from then on the
model feeds on its own predictions, ``x_t = sigmoid(y_{t-1})`` for ``t >= teacher_frames``
(a closed-loop rollout), in training as in testing, with the gradient flowing through the fed
predictions. The loss is the binary cross-entropy of every predicted frame ``1 .. T-1``.

A *curtain* (columns ``[start, stop)``) hides a band of every frame the model reads, the
true ones and its own predictions alike (the band is set to 0, the background), while the
targets stay whole: the model must keep track of what it cannot see.

Encoder: ``L`` convolutions ``4x4``, stride 2 (channels ``c, 2c, .., 2^{L-1} c``), ReLU, then
a linear map to ``E`` and a LayerNorm; the decoder mirrors it (linear, then ``L`` transposed
convolutions). With ``activation="leaky_relu"`` every ReLU is a leaky one (slope 0.01): the
frames are mostly background, and with ReLU a unit whose bias turns negative gives 0 on every
frame and never learns again; in our bouncing-balls runs at lr 3e-3 the whole encoder died in
some seeds (every unit of its last convolution 0 or constant on every frame, so the core read
the same embedding whatever the frame), and no core can learn the motion from that.

With ``frame_skip`` (our addition, not in the papers) the decoder also sees the frame just
read: its last transposed convolution gives ``c`` maps, and a ``3x3`` convolution over those
maps and ``x_t`` gives the logits, ``y_t = Conv([Dec(h_t), x_t])``. Copying the frame then
needs no training, so a short CPU budget is spent on the motion, which only the core can
supply; in the rollout ``x_t`` is the model's own prediction, and under the curtain it is blank
in the band like every input. ``S`` must be a multiple of ``2^L``.

Dimension legend: B = batch, T = frames, S = frame side, E = frame embedding, H = core
output size, C = channels.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims.cell import BRIMsDiagnostics, join_diagnostics
from brims_experiments.tasks.cores import CoreConfig, RecurrentCore

Curtain = tuple[int, int]  # hidden columns [start, stop)


def check_frame_size(frame_size: int, conv_layers: int) -> None:
    """Raise unless the encoder's ``conv_layers`` halvings divide ``frame_size`` exactly."""
    factor = 2**conv_layers
    if frame_size % factor or frame_size < factor:
        raise ValueError(f"frames of {frame_size}x{frame_size} pixels do not fit the encoder: its {conv_layers} "
                         f"stride-2 convolutions need a side that is a multiple of {factor}")


def hide(frames: Tensor, curtain: Curtain | None) -> Tensor:
    """``frames (..., S, S)`` with columns ``[start, stop)`` set to 0 (a copy; unchanged without a curtain)."""
    if curtain is None:
        return frames
    start, stop = curtain
    visible = torch.ones(frames.shape[-1], dtype=frames.dtype, device=frames.device)
    visible[start:stop] = 0
    return frames * visible  # (..., S, S)


ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}  # LeakyReLU: slope 0.01 below 0


class VideoPredictor(nn.Module):
    """Encoder → core → decoder with a teacher-forced prefix and a closed-loop rollout (see the
    module docstring)."""

    def __init__(self, core: CoreConfig, frame_size: int, teacher_frames: int, embedding_size: int, channels: int,
                 conv_layers: int, frame_skip: bool = False, activation: str = "relu") -> None:
        super().__init__()
        check_frame_size(frame_size, conv_layers)
        if teacher_frames < 1:
            raise ValueError(f"teacher_frames must be >= 1 (the rollout starts from true frames), got {teacher_frames}")
        self.frame_size = frame_size
        self.teacher_frames = teacher_frames
        widths = [1] + [channels * 2**i for i in range(conv_layers)]  # (1, c, 2c, ..)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        nonlinearity = ACTIVATIONS[activation]
        side = frame_size // 2**conv_layers
        encoder: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nonlinearity()]
        # LayerNorm: unit-scale frame features, so that the input attention's logits are not
        # all near 0 at the start (the sparse frames otherwise give tiny embeddings).
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), nn.Linear(widths[-1] * side * side, embedding_size),
                                     nn.LayerNorm(embedding_size))
        self.core = RecurrentCore(core, embedding_size)
        decoder: list[nn.Module] = [nn.Linear(core.hidden_size, widths[-1] * side * side), nonlinearity(),
                                    nn.Unflatten(1, (widths[-1], side, side))]
        if frame_skip:
            widths[0] = channels  # the last transposed convolution gives c maps for the merge
        for c_in, c_out in zip(widths[:0:-1], widths[-2::-1]):
            decoder += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nonlinearity()]
        # Without the skip the last layer gives the logits: no ReLU.
        self.decoder = nn.Sequential(*decoder) if frame_skip else nn.Sequential(*decoder[:-1])
        self.merge = nn.Conv2d(channels + 1, 1, 3, padding=1) if frame_skip else None
        # Channels-last convolution weights (so activations follow): the same math, and oneDNN's
        # CPU convolutions of so few channels run faster in it (a training step of the video
        # suite's BRIMs 0.86x, its LSTM 0.75x the time; the 9 -> 1 merge alone about 0.4x).
        self.to(memory_format=torch.channels_last)

    def feature_maps(self, frames: Tensor) -> Tensor:
        """``(N, S, S)`` → the last convolution's activations ``(N, C, S/2^L, S/2^L)`` (for diagnostics)."""
        return self.encoder[:-3](frames.reshape(-1, 1, self.frame_size, self.frame_size))  # before Flatten, Linear, LayerNorm

    def encode(self, frames: Tensor) -> Tensor:
        """``(T, B, S, S)`` → ``(T, B, E)``."""
        steps, batch = frames.shape[:2]
        return self.encoder(frames.reshape(steps * batch, 1, self.frame_size, self.frame_size)).view(steps, batch, -1)

    def decode(self, output: Tensor, seen: Tensor) -> Tensor:
        """``output (T, B, H)`` and the frames read ``seen (T, B, S, S)`` → logits ``(T, B, S, S)``."""
        steps, batch = output.shape[:2]
        maps = self.decoder(output.flatten(0, 1))  # (T*B, 1 or c, S, S)
        if self.merge is not None:
            maps = self.merge(torch.cat([maps, seen.reshape(steps * batch, 1, *seen.shape[-2:])], 1))  # (T*B, 1, S, S)
        return maps.view(steps, batch, self.frame_size, self.frame_size)

    def forward(self, frames: Tensor, *, curtain: Curtain | None = None,
                return_diagnostics: bool = False) -> Tensor | tuple[Tensor, BRIMsDiagnostics]:
        """``frames (B, T, S, S)`` in ``[0, 1]`` → logits ``(B, T-1, S, S)`` of frames ``1 .. T-1``.

        Only frames ``0 .. teacher_frames-1`` are read; the later ones are the model's own.
        """
        size, prefix = self.frame_size, self.teacher_frames
        if frames.dim() != 4 or frames.shape[2:] != (size, size):
            raise ValueError(f"frames must be (B, T, {size}, {size}), got {tuple(frames.shape)}")
        steps = frames.shape[1]
        if steps <= prefix:
            raise ValueError(f"{steps} frames leave nothing to roll out after the {prefix} teacher-forced ones")
        seen = hide(frames[:, :prefix].transpose(0, 1), curtain)  # (k, B, S, S)
        output, state, diagnostics = self.core(self.encode(seen), return_diagnostics=return_diagnostics)  # (k, B, H)
        logits = [self.decode(output, seen)]  # [(k, B, S, S)]: predictions of frames 1 .. k
        parts = [diagnostics]
        for _ in range(prefix, steps - 1):
            fed = hide(torch.sigmoid(logits[-1][-1:]), curtain)  # (1, B, S, S): its own last prediction
            output, state, diagnostics = self.core(self.encode(fed), state, return_diagnostics=return_diagnostics)
            logits.append(self.decode(output, fed))  # (1, B, S, S)
            parts.append(diagnostics)
        result = torch.cat(logits).transpose(0, 1)  # (B, T-1, S, S)
        # The core calls' diagnostics (T_i, B, ...) joined along time.
        return (result, join_diagnostics(parts, torch.cat)) if return_diagnostics else result


def bce_per_frame(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy summed over each frame's pixels: ``(B, T, S, S)`` → ``(B, T)`` nats."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").sum((-2, -1))
