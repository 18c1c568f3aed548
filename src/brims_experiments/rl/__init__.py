"""Reinforcement learning with recurrent cores: recurrent PPO on gymnasium vector environments."""
