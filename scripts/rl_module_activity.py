"""What the modules of a trained modular RL agent do while it plays: per layer, how often each module
is active, how often the active set changes from one step to the next, how many of a module's
active steps follow an active step of its own, and where the input attention goes (null, the
observation below, the layer above).

    python scripts/rl_module_activity.py runs/rl/cartpole/brims/seed0 runs/rl/cartpole/brims-all-active/seed0 \
        --episodes 20 --json results/rl/module_activity.json

The episodes are the test's kind (the sampling policy, environments seeded apart from training),
played one step at a time with the core's diagnostics; statistics count every step of every
episode, and a step's predecessor only within its episode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from brims_experiments.data.store import atomic_write_text
from brims_experiments.rl.envs import make_vector_env
from brims_experiments.rl.run import EVAL_SEED, load_agent


def play(folder: Path, episodes: int) -> list[dict[str, np.ndarray]]:
    """Per episode and layer: ``active (T, n)`` bool and ``attention (T, n, 1 + S)``."""
    config, agent, _ = load_agent(folder, torch.device("cpu"))
    core = agent.core
    envs = make_vector_env(config.env, 1)
    torch.manual_seed(EVAL_SEED)
    recorded = []
    try:
        for episode in range(episodes):
            obs, _ = envs.reset(seed=EVAL_SEED + episode)
            state = core.initial_state(1, "cpu")
            layers: list[dict[str, list]] = []
            done = False
            with torch.no_grad():
                while not done:
                    x = agent.encoder(agent.normalizer(torch.as_tensor(obs)))  # (1, E)
                    output, state, diagnostics = core(x.unsqueeze(0), state, return_diagnostics=True)  # (1, 1, H)
                    logits = agent.policy(torch.cat([output[0], x], dim=-1))  # (1, A)
                    action = torch.distributions.Categorical(logits=logits).sample()
                    obs, _, terminated, truncated, _ = envs.step(action.numpy())
                    done = bool(terminated[0] or truncated[0])
                    if not layers:
                        layers = [{"active": [], "attention": []} for _ in diagnostics.active]
                    for layer, active, attention in zip(layers, diagnostics.active, diagnostics.attention):
                        layer["active"].append(active[0, 0].numpy())  # (n,)
                        layer["attention"].append(attention[0, 0].numpy())  # (n, 1 + S)
            recorded.append([{key: np.stack(values) for key, values in layer.items()} for layer in layers])
    finally:
        envs.close()
    return recorded


def statistics(recorded: list) -> list[dict[str, object]]:
    """Per layer, over every step of every episode."""
    result = []
    for index in range(len(recorded[0])):
        active = [episode[index]["active"] for episode in recorded]  # (T, n) each
        attention = np.concatenate([episode[index]["attention"] for episode in recorded])  # (steps, n, 1 + S)
        steps = sum(len(a) for a in active)
        changed = sum(int((a[1:] != a[:-1]).any(axis=1).sum()) for a in active)
        pairs = sum(len(a) - 1 for a in active)
        follows = sum(int((a[1:] & a[:-1]).sum()) for a in active)
        active_after_first = sum(int(a[1:].sum()) for a in active)
        slots = ["null", "below", "above"][: attention.shape[-1]]
        result.append({
            "layer": index,
            "steps": steps,
            "share_active_per_module": [round(float(v), 3) for v in np.concatenate(active).mean(axis=0)],
            "active_set_changes_per_step": round(changed / max(pairs, 1), 3),
            "active_steps_after_an_active_step": round(follows / max(active_after_first, 1), 3),
            "attention_mean": {slot: round(float(attention[..., i].mean()), 3) for i, slot in enumerate(slots)},
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="RL run folders of modular agents")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per run (default: 20)")
    parser.add_argument("--json", type=Path, help="also write the statistics here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = {}
    for folder in args.runs:
        recorded = play(folder, args.episodes)
        lengths = [len(episode[0]["active"]) for episode in recorded]
        found[str(folder)] = {"episodes": len(recorded), "mean_length": float(np.mean(lengths)),
                              "layers": statistics(recorded)}
        print(f"{folder}: {len(recorded)} episodes, mean length {np.mean(lengths):.1f}")
        for layer in found[str(folder)]["layers"]:
            print(f"  layer {layer['layer']}: active share per module {layer['share_active_per_module']}, "
                  f"active set changes on {layer['active_set_changes_per_step']:.0%} of steps, "
                  f"{layer['active_steps_after_an_active_step']:.0%} of active steps follow an active step, "
                  f"attention {layer['attention_mean']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
