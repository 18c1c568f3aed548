"""The experiments of the BRIMs and RIMs papers on the `brims` library: tasks, data, the training
harness (Lightning), reinforcement learning, presets and the `brims` command."""
