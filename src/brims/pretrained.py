"""A trained network as a folder: ``config.json`` (its :class:`BRIMsConfig`) and ``model.safetensors``.

``BRIMs.save_pretrained(folder)`` and ``BRIMs.from_pretrained(folder)`` (and the same on ``RIMs``)
are the methods over these functions. The format (docs/design.md, "Pretrained folders"):

- ``config.json``: ``{"format": "brims", "format_version": 1, "config": {...}}``, where
  ``config`` is ``BRIMsConfig.to_dict()`` (every field, lists for tuples);
- ``model.safetensors``: the network's ``state_dict()`` (names as ``BRIMs`` has them,
  ``cell.layers.0.cell.weight_hh`` ...), in the dtype it was saved in.

Each file is written atomically (a temporary file in the same folder, then ``os.replace``), so
a crash leaves the previous file or the new one, never half of one. Reading never runs code
(JSON and safetensors only) and needs no network. The ``safetensors`` package is imported when a
folder is written or read, so that ``import brims`` still loads torch alone.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from brims.config import BRIMsConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "brims"
FORMAT_VERSION = 1

Model = TypeVar("Model", bound=nn.Module)


# ---- writing ------------------------------------------------------------------------------------------


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model``'s config and weights to ``folder`` (made if missing); returns the folder.

    ``model`` is a :class:`brims.BRIMs` (or anything with a ``config`` :class:`BRIMsConfig` and the
    state dict of the network it builds). The weights are written first, then the config.
    """
    from safetensors.torch import save  # not at import: `import brims` loads torch alone

    config = getattr(model, "config", None)
    if not isinstance(config, BRIMsConfig):
        raise TypeError(f"save_pretrained needs a model with a BRIMsConfig as .config, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    _atomic_write(folder / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    _atomic_write(folder / CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return folder


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path``, flush it to disk, then rename it over ``path``.

    The temporary file is created with the mode a plain ``open`` gives (0o666 less the umask).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---- reading ------------------------------------------------------------------------------------------


def read_config(folder: str | Path) -> BRIMsConfig:
    """The :class:`BRIMsConfig` in ``folder/config.json``.

    Raises ``FileNotFoundError`` for a missing folder or file and ``ValueError`` naming the file
    for anything else: not JSON, another format or a newer version, unknown or invalid fields.
    """
    path = _existing_file(folder, CONFIG_FILE)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):  # a malformed file, not a wrong argument: ValueError
        raise ValueError(f"{path} must hold a JSON object, got {type(document).__name__}")  # noqa: TRY004
    if document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a brims config: its \"format\" is {document.get('format')!r}, not {FORMAT!r}")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        newer = " (written by a newer brims: upgrade brims)" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise ValueError(f"{path} has format_version {version!r}; this brims reads version {FORMAT_VERSION}{newer}")
    unknown = sorted(set(document) - {"format", "format_version", "config"})
    if unknown:
        raise ValueError(f"{path} has unknown keys {unknown}; it holds format, format_version and config")
    try:
        return BRIMsConfig.from_dict(document.get("config"))
    except (TypeError, ValueError) as error:  # unknown or missing fields, invalid values
        raise ValueError(f"{path}: bad \"config\": {error}") from None


def read_weights(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The tensors in ``folder/model.safetensors``, on ``device``.

    Raises ``FileNotFoundError`` for a missing folder or file and ``ValueError`` naming the file
    when it is not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing_file(folder, WEIGHTS_FILE)
    try:
        return load_file(path, device=str(torch.device(device)))
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None


def load_pretrained(
    folder: str | Path, build: Callable[[BRIMsConfig], Model], device: torch.device | str = "cpu"
) -> Model:
    """``build(config)`` (a model class, e.g. ``brims.BRIMs``) with the weights in ``folder``.

    The network is built on the meta device (no initialisation, no random numbers drawn) and
    takes the saved tensors as its parameters, in their dtype, on ``device``. Raises
    ``FileNotFoundError`` or ``ValueError`` naming the file that is missing or does not match.
    """
    config = read_config(folder)
    weights = read_weights(folder, device)
    path = Path(folder) / WEIGHTS_FILE
    with torch.device("meta"):
        model = build(config)
    expected = model.state_dict()
    problems = [f"missing {name} {tuple(t.shape)}" for name, t in expected.items() if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [
        f"{name} has shape {tuple(weights[name].shape)}, the config needs {tuple(t.shape)}"
        for name, t in expected.items()
        if name in weights and weights[name].shape != t.shape
    ]
    dtypes = sorted({str(t.dtype) for t in weights.values()})
    if not problems and (len(dtypes) > 1 or not all(t.is_floating_point() for t in weights.values())):
        problems.append(f"the tensors must share one floating dtype, got {', '.join(dtypes)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{path} does not match {Path(folder) / CONFIG_FILE}: {shown}")
    model.load_state_dict(weights, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor that is not in the state dict (none today): it would be uninitialised
        raise ValueError(f"{path}: the model has tensors the state dict does not hold: {left}")
    return model


def _existing_file(folder: str | Path, name: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"pretrained folder {folder} {what} (save_pretrained writes {CONFIG_FILE} and {WEIGHTS_FILE})")
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a complete pretrained folder "
                                f"(save_pretrained writes {CONFIG_FILE} and {WEIGHTS_FILE})")
    return path
