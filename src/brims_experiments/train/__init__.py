"""Training harness of the experiments: typed configs, Lightning modules, runs, plots.

Needs the ``train`` extra (``lightning``, ``pyyaml``, ``matplotlib``); the ``brims``
library itself needs only torch.
"""
