"""The first training steps of a video run's model, watched from inside the core.

    python scripts/video_first_steps.py runs/pilots/video/balls3-brims-leaky-s0 --steps 100
    python scripts/video_first_steps.py runs/pilots/video/balls3-brims-leaky-s0 --steps 100 --attended-norm

Builds a fresh model from a bouncing-balls run folder's ``config.yaml`` (its weights are not read;
seed 0; ``--attended-norm`` / ``--no-attended-norm`` set ``model.core.brims.attended_norm``, else
the run's setting holds) and trains it with the experiment's own loss and the run's Adam learning
rate and gradient clipping on freshly drawn batches, printing every ``--every`` steps: the rollout error of
the batch, and per layer of a modular core the mean size of the attended input its cells read
and the share of their sigmoid-gate pre-activations beyond ±4 (saturated: the gate passes almost
no gradient; LSTM cells only), and the gradient norm that reaches the frame encoder's parameters.

This is how we found that BRIMs' bottom layer saturates in the first tens of steps at lr 3e-3
(docs/design.md, Departures; results/pilots/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from brims.grouped import GroupedLSTMCell
from brims_experiments.config_files import ConfigError
from brims_experiments.experiments import task_of
from brims_experiments.experiments.video import VideoTask
from brims_experiments.run_folder import CONFIG_FILE

SATURATED = 4.0  # |pre-activation| beyond which sigmoid' < 0.018


def build(path: str, attended_norm: bool | None) -> VideoTask:
    """The video experiment of a bouncing-balls run folder's config (``attended_norm`` None: as the run has it)."""
    config_file = Path(path) / CONFIG_FILE
    if task_of(config_file) != "video":
        raise SystemExit(f"{path}: not a video run folder (no {CONFIG_FILE} with task: video)")
    overrides = [] if attended_norm is None else [f"model.core.brims.attended_norm={str(attended_norm).lower()}"]
    try:
        config = VideoTask.load_config(config_file, overrides)
    except ConfigError as error:
        raise SystemExit(f"{config_file}: {error}") from None
    if config.data.dataset != "balls":
        raise SystemExit(f"{path}: a {config.data.dataset} video run, not bouncing balls")
    return VideoTask(config)


def watch_cells(model: torch.nn.Module) -> dict[int, list[tuple[float, float]]]:
    """Per layer, ``(mean |cell input|, saturated share)`` of every LSTM-cell call, filled by hooks."""
    seen: dict[int, list[tuple[float, float]]] = {}
    cells = [module for module in model.modules() if isinstance(module, GroupedLSTMCell)]
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
    parser.add_argument("run", help="a bouncing-balls video run folder (its config.yaml is used, not its weights)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--attended-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="set model.core.brims.attended_norm (default: as the run has it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = build(args.run, args.attended_norm)
    config = experiment.config
    data, train, core = config.data, config.train, config.model.core
    torch.manual_seed(0)
    model = experiment.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(1)
    seen = watch_cells(model)
    encoder = [p for name, p in model.named_parameters() if name.startswith("encoder.")]
    print(f"{core.kind}, lr {train.lr}, attended_norm {core.is_modular_kind and core.option('attended_norm')}")
    layers = sum(isinstance(module, GroupedLSTMCell) for module in model.modules())  # 0 for the lstm core
    print("| step | rollout BCE | " + "".join(f"layer {i}: mean abs input, saturated gates | " for i in range(layers))
          + "encoder gradient norm |")
    for step in range(args.steps + 1):
        for calls in seen.values():
            calls.clear()
        batch = experiment.draw(data.objects, data.batch_size, generator, split="train")
        loss, logged = experiment.step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        encoder_norm = torch.cat([p.grad.flatten() for p in encoder]).norm().item()
        if train.grad_clip:  # 0: off, as in training
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        if step % args.every == 0:
            per_layer = [torch.tensor(calls).mean(0).tolist() for _, calls in sorted(seen.items())]
            cells = "".join(f"{size:.2f}, {share:.0%} | " for size, share in per_layer)
            print(f"| {step} | {logged['rollout_bce'].item():.1f} | {cells}{encoder_norm:.1e} |", flush=True)


if __name__ == "__main__":
    main()
