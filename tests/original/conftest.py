"""The original repository's own test files (google-research/vision_transformer, vit_jax/*_test.py),
run unchanged against this package: they are the acceptance suite of the drop-in contract.

Two things are arranged here rather than in the files: tfds data is mocked (the tests must run
offline; train_test fine-tunes on cifar10), and two cases of preprocess_test are expected to fail:
they replace `tensorflow_text.SentencepieceTokenizer` and `tf.io.gfile.GFile` with mocks and check
the calls made to them, and vit_jax.preprocess uses the `sentencepiece` library and vit_jax.paths
instead. The behaviour those cases encode (sticky </s>, truncation to max_len - 1, </s> padding,
tf.data use) is checked against tensorflow_text itself with a real SentencePiece model in
tests/test_lit.py.
"""

import pytest


@pytest.fixture(autouse=True)
def offline_tfds():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=100):
        yield



_MOCKS_TENSORFLOW_TEXT = ('test_sentencepiece_tokenizer', 'test_pp_sentencepiece')


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.endswith('preprocess_test') and item.name in _MOCKS_TENSORFLOW_TEXT:
            item.add_marker(pytest.mark.xfail(strict=True, reason='mocks tensorflow_text, which '
                                              'vit_jax.preprocess does not call (see tests/test_lit.py)'))
