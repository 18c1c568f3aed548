"""The README's Python runs as written, on a CPU: every ```python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_block_of_the_readme_runs_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves a model folder where it runs
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README shows no Python"
    namespace: dict = {}
    threads = torch.get_num_threads()
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 -- our own README, run as a user would
    finally:
        torch.set_num_threads(threads)
