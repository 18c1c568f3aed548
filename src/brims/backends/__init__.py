"""Opt-in faster ways to run the same BRIMs steps, each tested equal to the eager autograd path."""
