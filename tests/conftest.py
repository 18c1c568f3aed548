"""Fixtures for the brims tests (helpers live in ``support.py``)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton backend's kernels run in Triton's interpreter, which must be chosen
# before triton is imported (brims imports it only when that backend first runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from support import ALL_COMBOS, MULTI_LAYER_COMBOS, make_config

from brims import BRIMsConfig


@pytest.fixture(params=ALL_COMBOS)
def config(request) -> BRIMsConfig:
    """Every combination of cell x layers (1-3) x top_down x communication."""
    return make_config(*request.param)


@pytest.fixture(params=MULTI_LAYER_COMBOS)
def multi_layer_config(request) -> BRIMsConfig:
    """The combinations with at least two layers (where top-down exists)."""
    return make_config(*request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and on a busy machine more threads are slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
