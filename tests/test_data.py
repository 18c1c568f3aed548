"""The data layer on generated files: idx and CIFAR readers, CIFAR preparation, verified splits.

No test touches the network or fetched data: every file is generated here in the official
format (idx for MNIST, python-pickle batches for CIFAR-10) or written with the library itself.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from brims_experiments.data.fetch import CIFAR_FILES, fetch_cifar10
from brims_experiments.data.formats import read_cifar_batch, read_idx
from brims_experiments.data.images import ImageSplit, load_image_split, save_image_dataset
from brims_experiments.data.store import (
    DATA_ENV,
    MANIFEST,
    DataCorruptError,
    DataMissingError,
    atomic_write,
    write_manifest,
)

# ---- idx ------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0, 0, 0x08, rank, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5)], ids=["labels", "images"])
def test_idx_round_trip(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    data = idx_bytes(array)
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    tensor = read_idx(path)
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == shape
    assert np.array_equal(tensor.numpy(), array)


def _good_idx() -> bytes:
    return idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda b: b[:-1], id="data-truncated"),
        pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
        pytest.param(lambda b: b[:9], id="header-truncated"),
        pytest.param(lambda b: b[:3], id="shorter-than-magic"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:2] + b"\x09" + b[3:], id="wrong-type-code"),
        pytest.param(lambda b: b"\x01" + b[1:], id="nonzero-magic"),
        pytest.param(lambda b: b[:3] + b"\x00" + b[4:], id="rank-zero"),
    ],
)
def test_idx_corruption_is_refused(tmp_path, corrupt, compress):
    data = corrupt(_good_idx())
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataCorruptError, match="bad.idx"):
        read_idx(path)


def test_idx_broken_gzip_stream(tmp_path):
    path = tmp_path / "bad.idx.gz"
    path.write_bytes(gzip.compress(_good_idx())[:-12])  # gzip magic, then a cut stream
    with pytest.raises(DataCorruptError, match="gzip"):
        read_idx(path)


# ---- CIFAR-10 python batches -------------------------------------------------------------------


def cifar_images(n: int, seed: int) -> np.ndarray:
    """``(N, 32, 32, 3)`` uint8 with distinct values per channel and position."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def cifar_batch_bytes(images: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    """The official layout: rows of 1024 red, then 1024 green, then 1024 blue values, row-major."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # (N, 3072) channel-major
    batch = {b"batch_label": b"generated", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(batch, protocol=protocol)


def test_cifar_batch_channel_order_and_pixel_placement(tmp_path):
    n = 3
    data = np.zeros((n, 3072), dtype=np.uint8)
    # Image 0: a single red pixel at row 1, column 2; image 1: green at (31, 0); image 2: blue at (0, 31).
    data[0, 0 * 1024 + 1 * 32 + 2] = 200
    data[1, 1 * 1024 + 31 * 32 + 0] = 150
    data[2, 2 * 1024 + 0 * 32 + 31] = 100
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [3, 0, 9]}, protocol=2))
    images, labels = read_cifar_batch(path)
    assert images.shape == (n, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.tolist() == [3, 0, 9] and labels.dtype == torch.int64
    expected = torch.zeros(n, 32, 32, 3, dtype=torch.uint8)
    expected[0, 1, 2, 0] = 200
    expected[1, 31, 0, 1] = 150
    expected[2, 0, 31, 2] = 100
    assert torch.equal(images, expected)


def test_cifar_batch_random_images_round_trip(tmp_path):
    images = cifar_images(5, seed=1)
    path = tmp_path / "batch"
    path.write_bytes(cifar_batch_bytes(images, [0, 1, 2, 3, 4]))
    read, labels = read_cifar_batch(path)
    assert np.array_equal(read.numpy(), images)
    assert labels.tolist() == [0, 1, 2, 3, 4]


class _RunsCode:
    """Unpickling this calls ``os.system`` (creating ``marker``), as a hostile file could."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_naming_a_foreign_callable_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil_batch"
    payload = {b"data": np.zeros((1, 3072), dtype=np.uint8), b"labels": _RunsCode(marker)}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataCorruptError, match="os|posix|system"):
        read_cifar_batch(path)
    assert not marker.exists(), "the unpickler ran the callable named by the file"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({b"data": np.zeros((2, 3072), np.uint8)}, id="no-labels"),
        pytest.param([1, 2, 3], id="not-a-dict"),
        pytest.param({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, id="wrong-row-size"),
        pytest.param({b"data": np.zeros((2, 3072), np.int16), b"labels": [0, 1]}, id="wrong-dtype"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, id="label-count"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, id="label-range"),
    ],
)
def test_cifar_malformed_batches(tmp_path, payload):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataCorruptError, match="batch"):
        read_cifar_batch(path)


def test_cifar_truncated_pickle(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(cifar_batch_bytes(cifar_images(2, 0), [1, 2])[:-100])
    with pytest.raises(DataCorruptError):
        read_cifar_batch(path)


def write_cifar_folder(folder: Path, per_batch: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The six official batch files (tiny, generated); returns what each holds."""
    folder.mkdir(parents=True)
    contents = {}
    for i, name in enumerate(CIFAR_FILES):
        images = cifar_images(per_batch, seed=10 + i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        (folder / name).write_bytes(cifar_batch_bytes(images, labels))
        contents[name] = (images, labels)
    return contents


def _check_prepared_cifar(root: Path, contents) -> None:
    train = load_image_split("cifar10", "train", root)
    test = load_image_split("cifar10", "test", root)
    expected_train = np.concatenate([contents[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(train.images.numpy(), expected_train)
    assert train.labels.tolist() == [label for i in range(1, 6) for label in contents[f"data_batch_{i}"][1]]
    assert np.array_equal(test.images.numpy(), contents["test_batch"][0])
    assert test.labels.tolist() == contents["test_batch"][1]


def test_fetch_cifar10_verify_fails_on_md5(tmp_path):
    write_cifar_folder(tmp_path / "src" / "cifar-10-batches-py")
    with pytest.raises(DataCorruptError, match=r"data_batch_1.*md5.*expected c99cafc152244af753f735de768cd75f"):
        fetch_cifar10(tmp_path / "src", root=tmp_path / "data", verify=True)
    assert not (tmp_path / "data" / "cifar10" / MANIFEST).exists()


def test_fetch_cifar10_unverified_folder(tmp_path):
    contents = write_cifar_folder(tmp_path / "src" / "cifar-10-batches-py")
    folder = fetch_cifar10(tmp_path / "src", root=tmp_path / "data", verify=False)
    assert folder == tmp_path / "data" / "cifar10"
    _check_prepared_cifar(tmp_path / "data", contents)


def test_fetch_cifar10_unverified_tar_gz(tmp_path):
    contents = write_cifar_folder(tmp_path / "build" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    fetch_cifar10(archive, root=tmp_path / "data", verify=False)
    _check_prepared_cifar(tmp_path / "data", contents)


def test_fetch_cifar10_bad_sources(tmp_path):
    with pytest.raises(DataMissingError, match="does not exist"):
        fetch_cifar10(tmp_path / "nowhere", root=tmp_path / "data")
    not_tar = tmp_path / "cifar.tar.gz"
    not_tar.write_bytes(b"not an archive")
    with pytest.raises(DataCorruptError, match="tar"):
        fetch_cifar10(not_tar, root=tmp_path / "data")
    incomplete = tmp_path / "incomplete"
    write_cifar_folder(incomplete)
    (incomplete / "test_batch").unlink()
    with pytest.raises(DataMissingError, match="test_batch"):
        fetch_cifar10(incomplete, root=tmp_path / "data", verify=False)


# ---- prepared image data sets --------------------------------------------------------------


def mnist_like(n: int, seed: int) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28, 1), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return ImageSplit(images, labels)


def test_save_and_load_round_trip(tmp_path):
    splits = {"train": mnist_like(6, 0), "test": mnist_like(4, 1)}
    folder = save_image_dataset("mnist", splits, tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {"train.pt", "test.pt"}
    for name, split in splits.items():
        loaded = load_image_split("mnist", name, tmp_path)
        assert torch.equal(loaded.images, split.images)
        assert torch.equal(loaded.labels, split.labels)


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env-root"))
    split = mnist_like(3, 2)
    assert save_image_dataset("fashion-mnist", {"test": split}) == tmp_path / "env-root" / "fashion-mnist"
    assert torch.equal(load_image_split("fashion-mnist", "test").images, split.images)


def test_one_flipped_byte_is_reported_with_the_file(tmp_path):
    folder = save_image_dataset("mnist", {"train": mnist_like(6, 0), "test": mnist_like(4, 1)}, tmp_path)
    path = folder / "test.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataCorruptError, match=r"test\.pt"):
        load_image_split("mnist", "test", tmp_path)
    assert len(load_image_split("mnist", "train", tmp_path)) == 6  # the other split is still fine


def test_truncated_split_file(tmp_path):
    folder = save_image_dataset("mnist", {"train": mnist_like(6, 0)}, tmp_path)
    path = folder / "train.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataCorruptError, match=r"train\.pt"):
        load_image_split("mnist", "train", tmp_path)


def test_missing_data_set_says_what_to_run(tmp_path):
    with pytest.raises(DataMissingError, match="brims fetch mnist"):
        load_image_split("mnist", "train", tmp_path)
    with pytest.raises(DataMissingError, match="brims fetch cifar10"):
        load_image_split("cifar10", "test", tmp_path)


def test_interrupted_write_without_manifest_is_missing(tmp_path):
    folder = save_image_dataset("mnist", {"train": mnist_like(6, 0), "test": mnist_like(4, 1)}, tmp_path)
    (folder / MANIFEST).unlink()  # the manifest is written last: a crash before it looks like this
    with pytest.raises(DataMissingError, match="brims fetch mnist"):
        load_image_split("mnist", "train", tmp_path)


def test_split_missing_from_manifest_or_folder(tmp_path):
    folder = save_image_dataset("mnist", {"train": mnist_like(6, 0)}, tmp_path)
    with pytest.raises(DataCorruptError, match="test.pt"):
        load_image_split("mnist", "test", tmp_path)  # not listed in the manifest
    (folder / "train.pt").unlink()
    with pytest.raises(DataCorruptError, match="train.pt"):
        load_image_split("mnist", "train", tmp_path)


def test_resaving_replaces_the_data_set(tmp_path):
    save_image_dataset("mnist", {"train": mnist_like(6, 0)}, tmp_path)
    replacement = mnist_like(5, 9)
    save_image_dataset("mnist", {"train": replacement}, tmp_path)
    assert torch.equal(load_image_split("mnist", "train", tmp_path).images, replacement.images)


def test_save_refuses_wrong_image_shape(tmp_path):
    wrong = ImageSplit(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataCorruptError, match="28, 28, 1"):
        save_image_dataset("mnist", {"train": wrong}, tmp_path)


def test_image_split_validates_types():
    with pytest.raises(DataCorruptError):
        ImageSplit(torch.zeros(2, 28, 28, 1), torch.zeros(2, dtype=torch.int64))  # float images
    with pytest.raises(DataCorruptError):
        ImageSplit(torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_unknown_names():
    with pytest.raises(ValueError, match="svhn"):
        load_image_split("svhn", "train")
    with pytest.raises(ValueError, match="valid"):
        load_image_split("mnist", "valid")


def test_split_file_that_would_run_code_is_refused(tmp_path):
    """A split file whose manifest matches but which names a callable: refused, never run."""
    folder = save_image_dataset("mnist", {"train": mnist_like(6, 0)}, tmp_path)
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"images": _RunsCode(marker), "labels": torch.zeros(1, dtype=torch.int64)}, buffer)
    (folder / "train.pt").write_bytes(buffer.getvalue())
    write_manifest(folder, ["train.pt"], {"dataset": "mnist"})
    with pytest.raises(DataCorruptError, match=r"train\.pt"):
        load_image_split("mnist", "train", tmp_path)
    assert not marker.exists(), "loading a split file ran code"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path, umask):
    """A temporary file from mkstemp is owner-only; the finished file must follow the umask."""
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.bin", lambda handle: handle.write(b"data"))
        with open(tmp_path / "plain.bin", "wb") as handle:
            handle.write(b"data")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == (tmp_path / "plain.bin").stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "plain.bin"]  # no temporary file left
