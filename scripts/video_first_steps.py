"""The first training steps of a video run's model, watched from inside the core.

    python scripts/video_first_steps.py runs/pilots/video/balls3-brims-leaky-s0 --steps 100
    python scripts/video_first_steps.py runs/pilots/video/balls3-brims-leaky-s0 --steps 100 --attended-norm

Builds a fresh model from a bouncing-balls run folder's config (seed 0; ``--attended-norm`` turns
``model.core.brims.attended_norm`` on) and trains it with the run's loss, Adam, learning rate and
gradient clipping on freshly drawn batches, printing every ``--every`` steps: the rollout error of
the batch, and per layer of a modular core the mean size of the attended input its cells read
and the share of their sigmoid-gate pre-activations beyond ±4 (saturated: the gate passes almost
no gradient; LSTM cells only), and the gradient norm that reaches the frame encoder's parameters.

This is how we found that BRIMs' bottom layer saturates in the first tens of steps at lr 3e-3
(docs/design.md, Departures; results/pilots/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from brims.grouped import GroupedLSTMCell
from brims_experiments import load_run
from brims_experiments.data.bouncing_balls import draw_balls
from brims_experiments.tasks.video import VideoPredictor, bce_per_frame

SATURATED = 4.0  # |pre-activation| beyond which sigmoid' < 0.018


def build(path: str, attended_norm: bool) -> tuple[VideoPredictor, object]:
    run = load_run(path)
    data, model = run.config.data, run.config.model
    if getattr(data, "dataset", None) != "balls":
        raise SystemExit(f"{path}: not a bouncing-balls video run")
    core = model.core
    if attended_norm:
        core = dataclasses.replace(core, brims={**core.brims, "attended_norm": True})
    torch.manual_seed(0)
    predictor = VideoPredictor(core, data.frame_size, data.teacher_frames, model.embedding_size, model.conv_channels,
                               model.conv_layers, model.frame_skip, model.conv_activation)
    return predictor, run.config


def watch_cells(predictor: VideoPredictor) -> dict[int, list[tuple[float, float]]]:
    """Per layer, ``(mean |cell input|, saturated share)`` of every LSTM-cell call, filled by hooks."""
    seen: dict[int, list[tuple[float, float]]] = {}
    cells = [module for module in predictor.modules() if isinstance(module, GroupedLSTMCell)]
    for layer, cell in enumerate(cells):
        def hook(module, args, out, layer=layer):
            x, h, _ = args
            with torch.no_grad():
                gates = torch.baddbmm(module.bias.unsqueeze(1), x, module.weight_ih) + torch.bmm(h, module.weight_hh)
                sigmoid_gates = gates[..., : 3 * h.shape[-1]]  # (n, B, 3m): input, forget, output
                seen.setdefault(layer, []).append((x.abs().mean().item(), (sigmoid_gates.abs() > SATURATED).float().mean().item()))
        cell.register_forward_hook(hook)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a bouncing-balls video run folder (its config is used, not its weights)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--attended-norm", action="store_true", help="model.core.brims.attended_norm=true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor, config = build(args.run, args.attended_norm)
    data, train = config.data, config.train
    optimizer = torch.optim.Adam(predictor.parameters(), lr=train.lr)
    balls = data.generator_config(data.objects)
    generator = torch.Generator().manual_seed(1)
    seen = watch_cells(predictor)
    encoder = [p for name, p in predictor.named_parameters() if name.startswith("encoder.")]
    print(f"{config.model.core.kind}, lr {train.lr}, attended_norm {args.attended_norm}")
    layers = sum(isinstance(module, GroupedLSTMCell) for module in predictor.modules())  # 0 for the lstm core
    print("| step | rollout BCE | " + "".join(f"layer {i}: mean abs input, saturated gates | " for i in range(layers))
          + "encoder gradient norm |")
    for step in range(args.steps + 1):
        for calls in seen.values():
            calls.clear()
        video = draw_balls(balls, [generator] * data.batch_size)  # (B, T, S, S)
        per_frame = bce_per_frame(predictor(video), video[:, 1:])  # (B, T-1)
        optimizer.zero_grad()
        (per_frame.mean() / data.frame_size**2).backward()  # the task's loss
        encoder_norm = torch.cat([p.grad.flatten() for p in encoder]).norm().item()
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), train.grad_clip)
        optimizer.step()
        if step % args.every == 0:
            per_layer = [torch.tensor(calls).mean(0).tolist() for _, calls in sorted(seen.items())]
            cells = "".join(f"{size:.2f}, {share:.0%} | " for size, share in per_layer)
            rollout = per_frame[:, data.teacher_frames:].mean().item()
            print(f"| {step} | {rollout:.1f} | {cells}{encoder_norm:.1e} |", flush=True)


if __name__ == "__main__":
    main()
