"""The text-data layer on generated text: tokenisation, vocabulary, split recipe, prepared corpora,
LM stream helpers and their errors.

No test touches the network or fetched data: documents are generated here and prepared under a
temporary data root with the library itself (registered names, generated content).
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch

from brims_experiments.data.corpora import (
    CORPORA,
    SPLIT_FRACTIONS,
    SPLITS,
    TextTooShortError,
    _check_raw,
    _dictd_number,
    batchify,
    bptt_windows,
    corrupt_tokens,
    gcide_body_start,
    load_corpus,
    load_vocabulary,
    prepare_corpus,
    read_r_lazyload,
    split_documents,
    split_points,
    strip_gutenberg,
)
from brims_experiments.data.fetch import fetch
from brims_experiments.data.store import MANIFEST, DataCorruptError, DataMissingError
from brims_experiments.data.vocab import EOS, UNK, Vocabulary, VocabularyMismatchError, paragraphs, word_tokens

# ---- generated text ------------------------------------------------------------------------


def novel(seed: int, paragraphs_count: int = 40) -> list[str]:
    """Lines of a hard-wrapped "novel": paragraphs of random words separated by blank lines."""
    rng = torch.Generator().manual_seed(seed)
    words = ["the", "a", "lady", "said", "was", "not", "Elinor", "Darcy's", "house", "very", "well"]
    lines: list[str] = [f"CHAPTER {seed}", ""]
    for _ in range(paragraphs_count):
        count = int(torch.randint(5, 30, (1,), generator=rng))
        picks = [words[int(i)] for i in torch.randint(0, len(words), (count,), generator=rng)]
        text = " ".join(picks) + "."
        lines.extend([text[i: i + 40] if i == 0 else text[i: i + 40].lstrip() for i in range(0, len(text), 40)])
        lines.append("")
    return lines


def play(seed: int, lines_count: int = 200) -> list[str]:
    rng = torch.Generator().manual_seed(seed)
    alphabet = "abcdefgh ,.'"
    return ["".join(alphabet[int(i)] for i in torch.randint(0, len(alphabet), (int(n),), generator=rng))
            for n in torch.randint(1, 50, (lines_count,), generator=rng)]


# ---- tokenisation --------------------------------------------------------------------------


def test_word_tokens_lowercase_punctuation_paragraphs():
    text = "It is a truth _universally_ acknowledged,\nthat Darcy's man--\n\nDon't!  \n\n\n\nEnd"
    assert word_tokens(text) == [
        "it", "is", "a", "truth", "universally", "acknowledged", ",", "that", "darcy's", "man", "--", EOS,
        "don't", "!", EOS,
        "end", EOS,
    ]


def test_paragraphs_join_wrapped_lines_and_skip_blank_runs():
    assert paragraphs(["", "One two", "three.", "", "", "Four", ""]) == [
        ["one", "two", "three", ".", EOS], ["four", EOS]]
    assert paragraphs([]) == [] and paragraphs(["", "  ", ""]) == []


# ---- vocabulary ----------------------------------------------------------------------------


def test_vocabulary_cap_keeps_most_frequent_and_maps_rest_to_unk():
    tokens = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["e", "d"] * 2 + ["rare"] + [EOS] * 7
    vocab = Vocabulary.build("word", tokens, max_size=5)
    assert vocab.tokens == (UNK, EOS, "a", "b", "c")  # <eos> is not counted twice
    assert len(vocab) == 5
    assert vocab.encode_tokens(["a", "rare", "d", "c", EOS]).tolist() == [2, 0, 0, 4, 1]
    # ties are broken by the token, so the order does not depend on the input order
    assert Vocabulary.build("word", ["y", "x"] * 2, max_size=4).tokens == (UNK, EOS, "x", "y")
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.build("word", tokens, max_size=2)


def test_char_vocabulary_unseen_characters_are_unk():
    vocab = Vocabulary.build("char", "abca\n")
    assert vocab.tokens[0] == UNK and set(vocab.tokens[1:]) == {"a", "b", "c", "\n"}
    ids = vocab.encode("cab\nz€")
    assert ids.dtype == torch.int64
    assert ids[-2:].tolist() == [0, 0]
    assert vocab.decode(ids[:4]) == "cab\n"


@pytest.mark.parametrize("level", ["word", "char"])
def test_encode_decode_round_trip(level):
    text = "Emma Woodhouse, handsome, clever--and rich.\n\nShe had lived nearly twenty-one years.\n\n"
    tokens = word_tokens(text) if level == "word" else text
    vocab = Vocabulary.build(level, tokens)
    ids = vocab.encode(text)
    assert vocab.unk_id not in ids.tolist()
    assert len(ids) == len(tokens)
    if level == "char":
        assert vocab.decode(ids) == text
    else:
        assert vocab.decode(ids).startswith("emma woodhouse , handsome , clever -- and rich .\n\nshe had")
    assert torch.equal(vocab.encode(vocab.decode(ids)), ids)


def test_fingerprint_stable_and_sensitive():
    vocab = Vocabulary.build("word", ["a", "b", "b"])
    assert vocab.fingerprint() == Vocabulary("word", (UNK, EOS, "b", "a")).fingerprint()
    # pinned: a checkpoint written today must still match after a refactor
    assert vocab.fingerprint() == "f7a717609d0843f895f9d6149a9118e26de55bfde10e56173c4e449101b3852a"
    others = [
        Vocabulary("word", (UNK, EOS, "a", "b")),  # order
        Vocabulary("word", (UNK, EOS, "b", "a", "c")),  # one more token
        Vocabulary("word", (UNK, EOS, "b", "A")),  # case
        Vocabulary("char", (UNK, "b", "a")),  # level
    ]
    assert len({vocab.fingerprint()} | {o.fingerprint() for o in others}) == len(others) + 1


def test_vocabulary_mismatch_is_a_clear_error():
    vocab = Vocabulary.build("char", "hello")
    vocab.check_matches(vocab.fingerprint())
    other = Vocabulary.build("char", "help")
    with pytest.raises(VocabularyMismatchError, match="not the one the checkpoint was trained with"):
        vocab.check_matches(other.fingerprint())


def test_vocabulary_json_round_trip_and_tamper():
    vocab = Vocabulary.build("word", word_tokens("one two two three\n\n"))
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    payload = json.loads(vocab.to_json())
    payload["tokens"][2], payload["tokens"][3] = payload["tokens"][3], payload["tokens"][2]
    with pytest.raises(DataCorruptError, match="fingerprint"):
        Vocabulary.from_json(json.dumps(payload))
    with pytest.raises(DataCorruptError, match="not a vocabulary"):
        Vocabulary.from_json("{}")


# ---- split recipe --------------------------------------------------------------------------


def test_split_points_cut_at_first_boundary_after_share():
    assert split_points([1] * 100) == (90, 95)
    assert split_points([30, 30, 30, 4, 3, 3]) == (3, 5)  # cuts at 90 and at 97 (the first boundary >= 95)
    assert split_points([10] * 8 + [15, 5]) == (9, 9)  # one unit spans 90..95: an empty valid block
    assert split_points([50, 50]) == (2, 2)  # one big unit: everything to train
    assert split_points([]) == (0, 0)


@pytest.mark.parametrize("level", ["word", "char"])
def test_split_documents_contiguous_deterministic_sizes(level):
    documents = [novel(s) for s in range(3)] if level == "word" else [play(s) for s in range(3)]
    splits = split_documents(level, documents)
    assert splits == split_documents(level, documents)  # deterministic
    sizes = {s: len(splits[s]) for s in SPLITS}
    total = sum(sizes.values())
    # each document contributes its contiguous 90/5/5 blocks, cut within one unit of the share
    per_doc = []
    for document in documents:
        doc_splits = split_documents(level, [document])
        whole = (word_tokens("\n".join(document)) if level == "word" else "".join(line + "\n" for line in document))
        joined = doc_splits["train"] + doc_splits["valid"] + doc_splits["test"]
        assert joined == whole  # blocks in order, nothing dropped, nothing shuffled
        longest_unit = (max(len(p) for p in paragraphs(document)) if level == "word"
                        else max(len(line) + 1 for line in document))
        n = len(whole)
        assert SPLIT_FRACTIONS[0] * n <= len(doc_splits["train"]) < SPLIT_FRACTIONS[0] * n + longest_unit
        per_doc.append(doc_splits)
    for split in SPLITS:  # the corpus split concatenates the documents' blocks in document order
        blocks = [d[split] for d in per_doc]
        assert splits[split] == ([t for block in blocks for t in block] if level == "word" else "".join(blocks))
    assert abs(sizes["train"] / total - 0.90) < 0.05 and sizes["valid"] > 0 and sizes["test"] > 0


def test_vocabulary_built_from_train_only(tmp_path):
    documents = [novel(s) for s in range(3)]
    documents[0].extend(["Zebrafish zebrafish.", ""])  # in document 0's last 5%: test only
    folder = prepare_corpus("austen", documents, tmp_path)
    corpus = load_corpus("austen", tmp_path)
    assert "zebrafish" not in corpus.vocab.tokens
    assert corpus.vocab.unk_id in corpus.test.tolist()
    assert folder == tmp_path / "austen"
    splits = split_documents("word", documents)
    assert "zebrafish" in splits["test"] and "zebrafish" not in splits["train"]


# ---- prepared corpora ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["austen", "shakespeare"])
def test_prepared_corpus_round_trip(tmp_path, name):
    level = CORPORA[name].level
    documents = [novel(s) for s in range(3)] if level == "word" else [play(s) for s in range(3)]
    prepare_corpus(name, documents, tmp_path)
    manifest = json.loads((tmp_path / name / MANIFEST).read_text())
    assert set(manifest["files"]) == {"train.pt", "valid.pt", "test.pt", "vocab.json"}
    corpus = load_corpus(name, tmp_path)
    assert corpus.level == level and corpus.vocab.level == level
    assert manifest["vocab_fingerprint"] == corpus.vocab.fingerprint()
    splits = split_documents(level, documents)
    for split in SPLITS:
        ids = corpus.split(split)
        assert ids.dtype == torch.int64 and ids.dim() == 1
        assert manifest["tokens"][split] == ids.numel() == len(splits[split])
    text = corpus.vocab.decode(corpus.train)
    assert text == splits["train"] if level == "char" else torch.equal(corpus.vocab.encode(text), corpus.train)
    assert load_vocabulary(name, tmp_path) == corpus.vocab
    assert not list((tmp_path / name).glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("victim", ["train.pt", "test.pt", "vocab.json"])
def test_corrupted_prepared_file_is_named(tmp_path, victim):
    prepare_corpus("shakespeare", [play(0)], tmp_path)
    path = tmp_path / "shakespeare" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorruptError, match=victim.replace(".", r"\.")):
        load_corpus("shakespeare", tmp_path)


def test_corrupted_raw_download_is_named(tmp_path):
    path = tmp_path / "gcide.index"
    path.write_bytes(b"not the index")
    with pytest.raises(DataCorruptError, match=r"corrupted download: gcide\.index"):
        _check_raw(path, "gcide.index", "gcide")


def test_missing_corpus_says_what_to_run(tmp_path):
    with pytest.raises(DataMissingError, match="brims fetch gcide"):
        load_corpus("gcide", tmp_path)


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="austen, shakespeare, gcide"):
        load_corpus("ptb", tmp_path)
    with pytest.raises(ValueError, match="austen"):
        fetch("ptb", tmp_path)


@pytest.mark.parametrize("documents", [[], [[]], [["", "  "]], [["One line only."]]],
                         ids=["no-documents", "empty", "blank", "too-short"])
def test_empty_or_too_short_text_writes_nothing(tmp_path, documents):
    with pytest.raises(TextTooShortError, match="empty or too short"):
        prepare_corpus("austen", documents, tmp_path)
    assert not (tmp_path / "austen").exists()


def test_failed_prepare_keeps_the_previous_corpus(tmp_path):
    prepare_corpus("shakespeare", [play(1)], tmp_path)
    before = load_corpus("shakespeare", tmp_path)
    with pytest.raises(TextTooShortError):
        prepare_corpus("shakespeare", [["x"]], tmp_path)
    assert torch.equal(load_corpus("shakespeare", tmp_path).train, before.train)


def test_crash_while_writing_leaves_no_complete_looking_corpus(tmp_path, monkeypatch):
    from brims_experiments.data import corpora

    prepare_corpus("shakespeare", [play(1)], tmp_path)
    real_write, calls = corpora.atomic_write, []

    def crash_on_second(path, write):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, write)

    monkeypatch.setattr(corpora, "atomic_write", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        prepare_corpus("shakespeare", [play(2)], tmp_path)
    # train.pt is new, the rest old: without a manifest the folder reads as not fetched
    with pytest.raises(DataMissingError, match="brims fetch shakespeare"):
        load_corpus("shakespeare", tmp_path)


# ---- raw formats ---------------------------------------------------------------------------


def test_strip_gutenberg_header_and_licence():
    text = ("The Project Gutenberg EBook of Hamlet\nlicence blah\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "HAMLET\nTo be.\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n")
    assert strip_gutenberg(text) == "HAMLET\nTo be.\n"
    assert strip_gutenberg("HAMLET\nA pretext.\n") == "HAMLET\nA pretext.\n"  # no markers: untouched


def test_gcide_body_starts_after_metadata_entries():
    assert _dictd_number("A") == 0 and _dictd_number("5I") == 57 * 64 + 8 and _dictd_number("BA") == 64
    index = "0\t5I\tFz\n00-database-info\tKj\tuk\n00-database-url\tC\tv\nzymotic\tBAA\tz\n"
    assert gcide_body_start(index) == 57 * 64 + 8
    with pytest.raises(DataCorruptError, match="no entries"):
        gcide_body_start("00-database-url\tC\tv\n")


def test_read_r_lazyload_on_generated_database(tmp_path):
    np = pytest.importorskip("numpy")
    rdata = pytest.importorskip("rdata")
    from rdata.conversion import convert_python_to_r_data
    from rdata.unparser import unparse_data

    novels = {"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["Persuasion", "Chapter 1"]}
    blob, variables = b"", {}
    for name, lines in novels.items():
        serialised = unparse_data(convert_python_to_r_data(np.array(lines)))
        chunk = struct.pack(">I", len(serialised)) + zlib.compress(serialised)  # R's lazy-load record
        variables[name] = np.array([len(blob), len(chunk)], dtype=np.int32)
        blob += chunk
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    rdata.write_rds(tmp_path / "Rdata.rdx", {"variables": variables, "references": {}, "compressed": True})
    objects = read_r_lazyload(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb")
    assert {k: list(v) for k, v in objects.items()} == novels
    (tmp_path / "Rdata.rdb").write_bytes(blob[:6] + b"garbage" + blob[13:])
    with pytest.raises(DataCorruptError, match="Rdata.rdb"):
        read_r_lazyload(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb")


# ---- LM stream helpers ---------------------------------------------------------------------


def test_batchify_contiguous_columns_drop_remainder():
    ids = torch.arange(103)
    streams = batchify(ids, 4)
    assert streams.shape == (25, 4)
    for b in range(4):
        assert torch.equal(streams[:, b], ids[25 * b: 25 * (b + 1)])
    assert batchify(torch.arange(8), 4).shape == (2, 4)
    with pytest.raises(TextTooShortError, match="too few"):
        batchify(torch.arange(7), 4)
    with pytest.raises(ValueError, match="batch_size"):
        batchify(ids, 0)


@pytest.mark.parametrize("steps,seq_len", [(25, 7), (25, 24), (25, 100), (2, 1), (11, 5)])
def test_bptt_windows_cover_the_stream(steps, seq_len):
    stream = torch.arange(steps * 3).view(steps, 3)
    windows = list(bptt_windows(stream, seq_len))
    for inputs, targets in windows:
        assert inputs.shape == targets.shape and 1 <= inputs.shape[0] <= seq_len and inputs.shape[1] == 3
        assert torch.equal(targets, inputs + 3)  # targets are the next step of each column
    assert all(w[0].shape[0] == seq_len for w in windows[:-1])
    assert torch.equal(torch.cat([w[0] for w in windows]), stream[:-1])
    assert torch.equal(torch.cat([w[1] for w in windows]), stream[1:])


def test_bptt_windows_seq_len_zero_fails_at_the_call():
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        bptt_windows(torch.zeros(10, 2), 0)  # no next(): the error comes before iteration
    with pytest.raises(TextTooShortError):
        bptt_windows(torch.zeros(1, 2), 5)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_corrupt_tokens_exact_count_and_deterministic(fraction):
    ids = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(0))
    original = ids.clone()
    first = corrupt_tokens(ids, fraction, 7, torch.Generator().manual_seed(1))
    again = corrupt_tokens(ids, fraction, 7, torch.Generator().manual_seed(1))
    other = corrupt_tokens(ids, fraction, 7, torch.Generator().manual_seed(2))
    assert torch.equal(ids, original)  # the input is not modified
    assert torch.equal(first, again)
    assert int((first != ids).sum()) == round(fraction * 1000)
    assert first.dtype == ids.dtype and int(first.min()) >= 0 and int(first.max()) < 7
    if 0 < fraction:
        assert not torch.equal(first, other)
        assert len(set(first[first != ids].tolist())) == 7  # replacements spread over the vocabulary


def test_corrupt_tokens_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        corrupt_tokens(torch.zeros(4, dtype=torch.long), 1.5, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        corrupt_tokens(torch.zeros(4, dtype=torch.long), 0.5, 1)
