"""Tokenisation and the vocabulary of a text corpus (word or character level).

Word level (PTB style): lowercase; a token is a word (letters and digits, with inner
apostrophes kept: ``don't``, ``elizabeth's``), a run of dashes, or any other single
punctuation character. Hard-wrapped lines are joined into paragraphs (a blank line ends one)
and every paragraph ends with ``<eos>``. Underscores are no tokens: Gutenberg texts use them
as italics markers (``_she_``).

Character level: every character is a token, line breaks included (``\\n``).

A vocabulary is built from the train split only. Ids are assigned by frequency (most frequent
first, ties by the token itself), after the special tokens: ``<unk>`` (id 0) at both levels,
``<eos>`` (id 1) at word level. Text outside the vocabulary encodes to ``<unk>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from brims_experiments.data.store import DataCorruptError, DataError

Level = Literal["word", "char"]
LEVELS: tuple[Level, ...] = ("word", "char")
UNK = "<unk>"
EOS = "<eos>"
PARAGRAPH_BREAK = "\n\n"  # how ``<eos>`` decodes: a blank line, which ends a paragraph when re-encoded
SPECIALS: dict[Level, tuple[str, ...]] = {"word": (UNK, EOS), "char": (UNK,)}

# A word (letters/digits, inner apostrophes kept), a dash run, or one other non-space character;
# underscores match neither (``\w`` includes them, ``[^\W_]`` does not).
_WORD_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|-{2,}|[^\w\s]")


class VocabularyMismatchError(DataError):
    """A vocabulary differs from the one a checkpoint was trained with."""


def paragraphs(lines: Iterable[str]) -> list[list[str]]:
    """Word tokens per paragraph, each paragraph ending with ``<eos>`` (blank lines separate them)."""
    result: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        words = _WORD_TOKEN.findall(line.lower())
        if words:
            current.extend(words)
        elif not line.strip() and current:
            result.append(current + [EOS])
            current = []
    if current:
        result.append(current + [EOS])
    return result


def word_tokens(text: str) -> list[str]:
    """The word-level token sequence of ``text`` (see the module docstring)."""
    return [token for paragraph in paragraphs(text.splitlines()) for token in paragraph]


@dataclass(frozen=True)
class Vocabulary:
    """An id <-> token map at one level; ``<unk>`` is id 0."""

    level: Level
    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        specials = SPECIALS[self.level]
        if tuple(self.tokens[: len(specials)]) != specials:
            raise DataCorruptError(f"a {self.level} vocabulary must start with {specials}, got {self.tokens[:3]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise DataCorruptError("vocabulary tokens are not unique")
        if self.level == "char" and any(len(t) != 1 for t in self.tokens[len(specials):]):
            raise DataCorruptError("a char vocabulary holds single characters only")
        object.__setattr__(self, "_index", {token: i for i, token in enumerate(self.tokens)})

    @classmethod
    def build(cls, level: Level, train_tokens: Iterable[str], max_size: int | None = None) -> Vocabulary:
        """The vocabulary of ``train_tokens``: specials, then the most frequent tokens up to ``max_size`` in all."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        specials = SPECIALS[level]
        if max_size is not None and max_size <= len(specials):
            raise ValueError(f"max_size must exceed the {len(specials)} special tokens, got {max_size}")
        counts = Counter(train_tokens)
        for special in specials:
            counts.pop(special, None)
        ranked = sorted(counts, key=lambda token: (-counts[token], token))  # ties by token: deterministic
        if max_size is not None:
            ranked = ranked[: max_size - len(specials)]
        return cls(level, specials + tuple(ranked))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def unk_id(self) -> int:
        return 0

    def id_of(self, token: str) -> int:
        return self._index.get(token, 0)

    def tokenize(self, text: str) -> list[str]:
        """``text`` as tokens of this vocabulary's level (before the vocabulary lookup)."""
        return word_tokens(text) if self.level == "word" else list(text)

    def encode_tokens(self, tokens: Sequence[str]) -> torch.Tensor:
        """Ids ``(N,)`` int64 of ``tokens``; unknown tokens become ``<unk>``."""
        index = self._index
        return torch.tensor([index.get(t, 0) for t in tokens], dtype=torch.int64)

    def encode(self, text: str) -> torch.Tensor:
        """Ids ``(N,)`` int64 of ``text`` (tokenised at this vocabulary's level)."""
        if self.level == "word":
            return self.encode_tokens(word_tokens(text))
        if not text:
            return torch.zeros(0, dtype=torch.int64)
        # Characters through a code-point lookup table: a Python loop over 40M characters is too slow.
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()  # (N,)
        table = torch.zeros(int(codes.max()) + 1, dtype=torch.int64)  # unknown code points -> <unk> (0)
        for i, token in enumerate(self.tokens[1:], start=1):
            if ord(token) < table.numel():
                table[ord(token)] = i
        return table[codes]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of ``ids``: characters joined, or words joined by spaces with ``<eos>`` as a paragraph break.

        Text without ``<unk>`` encodes back to the same ids.
        """
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < len(self.tokens) for i in values):
            raise ValueError(f"ids must lie in [0, {len(self.tokens)}), got {min(values)}..{max(values)}")
        tokens = [self.tokens[i] for i in values]
        if self.level == "char":
            return "".join(tokens)
        pieces: list[str] = []
        for token in tokens:
            if token == EOS:
                pieces.append(PARAGRAPH_BREAK)
            else:  # a space between words, none after a paragraph break
                pieces.append(token if not pieces or pieces[-1] == PARAGRAPH_BREAK else " " + token)
        return "".join(pieces)

    def fingerprint(self) -> str:
        """sha256 of the level and the ordered tokens: what a checkpoint records to pin its vocabulary."""
        payload = json.dumps({"level": self.level, "tokens": list(self.tokens)}, ensure_ascii=False,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def check_matches(self, fingerprint: str) -> None:
        """Raise ``VocabularyMismatchError`` unless this vocabulary has ``fingerprint``."""
        mine = self.fingerprint()
        if fingerprint != mine:
            raise VocabularyMismatchError(
                f"the vocabulary ({self.level}, {len(self)} tokens, fingerprint {mine[:16]}...) is not the one "
                f"the checkpoint was trained with (fingerprint {str(fingerprint)[:16]}...); use the checkpoint's "
                "own corpus, or refetch the corpus it was trained on"
            )

    def to_json(self) -> str:
        return json.dumps({"level": self.level, "tokens": list(self.tokens), "fingerprint": self.fingerprint()},
                          ensure_ascii=False, indent=0)

    @classmethod
    def from_json(cls, text: str, source: str = "vocabulary") -> Vocabulary:
        """Parse ``to_json`` output, checking its recorded fingerprint."""
        try:
            payload = json.loads(text)
            vocab = cls(payload["level"], tuple(payload["tokens"]))
            recorded = payload["fingerprint"]
        except (ValueError, KeyError, TypeError) as error:
            raise DataCorruptError(f"{source}: not a vocabulary file ({error})") from None
        if recorded != vocab.fingerprint():
            raise DataCorruptError(f"{source}: its tokens do not match its recorded fingerprint")
        return vocab
