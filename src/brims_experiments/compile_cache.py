"""torch.compile's code cache, kept beside the data.

Torch's default folder is under /tmp, which does not outlive a reboot, and a cold compile of a
BRIMs step takes minutes on a small CPU where a warm one takes seconds. Torch fixes the folder
(it sets ``TORCHINDUCTOR_CACHE_DIR`` to its default) as soon as ``torch._dynamo`` is imported, which
Lightning and our training modules do, so the ``brims`` command calls :func:`keep_compiled_code`
first, before it imports any of them.
"""

from __future__ import annotations

import os

from brims_experiments.data.store import data_root

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def keep_compiled_code() -> None:
    """Point torch.compile's cache at ``<data root>/../inductor`` unless the user chose a folder."""
    os.environ.setdefault(CACHE_ENV, str(data_root().parent / "inductor"))
