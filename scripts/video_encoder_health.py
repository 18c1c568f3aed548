"""Whether a trained video model's frame encoder still tells frames apart.

    python scripts/video_encoder_health.py runs/video/balls/brims/seed0 runs/pilots/video/balls3-lstm-leaky-s1

For each run folder (its best checkpoint) or ``.ckpt`` file: the encoder reads the first
``--frames`` true frames of ``--sequences`` bouncing-balls sequences of the run's own data
settings (the gradient, below, the whole sequences, rollout included), and the script prints

- the share of the last convolution's units that are 0 on every frame (dead ReLUs: no gradient
  reaches them again),
- the spread of the embedding the core reads, over frames (the standard deviation per feature,
  averaged over features) against its size (the mean absolute value): a spread near 0 means the
  core reads nearly the same input whatever the frame, and cannot learn the motion from it;
- how much of the training loss's gradient the core passes back to the encoder: the mean norm of
  the gradient on the embedding it reads, per frame, over the mean norm of the gradient on its
  output, per frame (0 when the core ignores its input: then the encoder cannot learn either).

In our bouncing-balls runs at lr 3e-3 with ReLU, a whole encoder died in some seeds (spread exactly
0); with ``model.conv_activation=leaky_relu`` none dies, but in BRIMs the spread stayed near 1% of
the size while the LSTM's grew to most of it, and BRIMs passed back 1e-4 to 2e-6 of the gradient
the LSTM passed at lr 3e-3 (results/pilots/README.md).
"""

from __future__ import annotations

import argparse

import torch

from brims_experiments import load_run
from brims_experiments.checkpoints import CheckpointError
from brims_experiments.config_files import ConfigError
from brims_experiments.experiments.video import VideoTask
from brims_experiments.tasks.video import VideoPredictor, bce_per_frame


def health(path: str, sequences: int, frames: int) -> dict[str, float]:
    try:
        run = load_run(path)
    except (CheckpointError, ConfigError) as error:
        raise SystemExit(f"{path}: {error}") from None
    if run.config.task != "video":
        raise SystemExit(f"{path}: a {run.config.task} run, not a video one")
    data = run.config.data
    if data.dataset != "balls":
        raise SystemExit(f"{path}: a {data.dataset} video run, not bouncing balls")
    if frames > data.frames:
        raise SystemExit(f"--frames {frames}: the run's sequences have {data.frames} frames")
    predictor = next(m for m in run.model.modules() if isinstance(m, VideoPredictor))
    draw = VideoTask(run.config).draw_each(data.objects, "train")
    video, _ = draw([torch.Generator().manual_seed(10_000 + i) for i in range(sequences)])  # (N, T, S, S)
    with torch.no_grad():
        read = video[:, :frames].transpose(0, 1)  # (frames, N, S, S)
        convolved = predictor.feature_maps(read.flatten(0, 1))  # (frames*N, C, s, s)
        embedding = predictor.encode(read).flatten(0, 1)  # (frames*N, E)
    return {"dead_units": (convolved == 0).all(0).float().mean().item(),
            "embedding_spread": embedding.std(0).mean().item(),
            "embedding_size": embedding.abs().mean().item(),
            "gradient_passed": gradient_passed(predictor, video)}


def gradient_passed(predictor: VideoPredictor, video: torch.Tensor) -> float:
    """Mean per-frame gradient norm on the embedding the core reads over that on the core's output,
    under the binary cross-entropy of the predicted frames (the training loss, up to a scale)."""
    grads: dict[str, list[torch.Tensor]] = {"embedding": [], "output": []}

    def keep(name: str, tensor: torch.Tensor) -> None:
        tensor.register_hook(lambda grad: grads[name].append(grad.flatten(0, -2).norm(dim=-1)))

    hooks = [predictor.encoder.register_forward_hook(lambda module, args, out: keep("embedding", out)),
             predictor.core.register_forward_hook(lambda module, args, out: keep("output", out[0]))]
    try:
        predictor.zero_grad()
        bce_per_frame(predictor(video), video[:, 1:]).mean().backward()
    finally:
        for hook in hooks:
            hook.remove()
    return (torch.cat(grads["embedding"]).mean() / torch.cat(grads["output"]).mean()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="video run folders or checkpoints")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | dead units of the last convolution | embedding spread over frames | embedding size | gradient passed to the encoder |")
    print("|---|---:|---:|---:|---:|")
    for path in args.runs:
        found = health(path, args.sequences, args.frames)
        print(f"| {path} | {found['dead_units']:.0%} | {found['embedding_spread']:.4f} | {found['embedding_size']:.3f} | {found['gradient_passed']:.1e} |")


if __name__ == "__main__":
    main()
