"""``brims export <run> <dir>``: a trained run's BRIMs core as a pretrained folder.

The folder holds ``config.json`` and ``model.safetensors`` (:mod:`brims.pretrained`), which the
library alone reads back, without the experiments or their checkpoints::

    brims export runs/smnist-cpu-brims exported/smnist
    core = brims.BRIMs.from_pretrained("exported/smnist")

The core is the recurrent network only (what ``load_run(run).core`` is), not the task's embedding
or readout. Runs of the ``lstm`` kind have a ``torch.nn.LSTM`` core and are refused.

Imports of the training stack are inside the functions, so that ``brims --help`` works without
the ``train`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from brims.pretrained import CONFIG_FILE, WEIGHTS_FILE


def export_run(run_path: str | Path, out_dir: str | Path) -> Path:
    """Write the core of the run at ``run_path`` (a run folder, its best checkpoint; RL: its last;
    or a ``.ckpt`` file) to ``out_dir`` with ``save_pretrained``; returns ``out_dir``.

    Raises ``CheckpointError`` for a missing run or a bad checkpoint, ``ConfigError`` for an
    ``lstm`` run or an ``out_dir`` that cannot be written.
    """
    from brims import BRIMs
    from brims_experiments.checkpoints import CheckpointError
    from brims_experiments.config_files import ConfigError
    from brims_experiments.trained import load_run

    run_path, out_dir = Path(run_path), Path(out_dir)
    if not run_path.exists():
        raise CheckpointError(f"run {run_path} does not exist: give a run folder or a .ckpt file")
    if run_path.is_file() and run_path.suffix != ".ckpt":
        raise CheckpointError(f"{run_path} is neither a run folder nor a .ckpt file")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file: export writes a folder ({CONFIG_FILE} and {WEIGHTS_FILE})")
    run = load_run(run_path)
    if not isinstance(run.core, BRIMs):
        raise ConfigError(
            f"{run_path} has a {type(run.core).__module__}.{type(run.core).__name__} core (model.core.kind="
            f"{run.config.model.core.kind}): export writes brims.BRIMs cores only (kinds brims, rims, brims-no-top-down)"
        )
    try:
        return run.core.save_pretrained(out_dir)
    except OSError as error:
        raise ConfigError(f"cannot write the export to {out_dir}: {error}") from error


def add_export_command(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained run's BRIMs core as config.json + model.safetensors for brims.BRIMs.from_pretrained",
        description="Write the recurrent core of a trained run (a run folder's best checkpoint, an RL run's last, "
        f"or a .ckpt file) to a folder as {CONFIG_FILE} and {WEIGHTS_FILE}, which brims.BRIMs.from_pretrained(dir) "
        "reads with the library alone. The core only: not the task's embedding or readout. lstm runs are refused.",
    )
    export.add_argument("run", help="run folder or .ckpt file")
    export.add_argument("dir", help=f"folder to write {CONFIG_FILE} and {WEIGHTS_FILE} to (made if missing)")
    export.set_defaults(handler=run_export, command_parser=export)


def run_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    folder = export_run(args.run, args.dir)
    print(f"wrote {folder / CONFIG_FILE} and {folder / WEIGHTS_FILE}")
    print(f"load it with: brims.BRIMs.from_pretrained({str(folder)!r})")
    return 0
