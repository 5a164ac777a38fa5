"""LiT (issue 13): the towers' numerics, the tokenizers against the original's (tensorflow_text),
the public .npz layout through the one loader, the catalogue, and vit-zeroshot end to end.

The parameter counts of the five public LiT models are the original's models_test
(tests/original/models_test.py).
"""

import functools
import http.server
import io
import json
import os
import random
import threading
import unicodedata

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
from PIL import Image

from vit_jax import checkpoint, preprocess, trees, zeroshot
from vit_jax.checkpoint import hub, loader
from vit_jax.checkpoint.facts import Facts
from vit_jax.errors import CheckpointError, ConfigError, DataError
from vit_jax.models import build_model, get_config, get_model

IMAGE = dict(patches=dict(size=(4, 4)), hidden_size=8, classifier='token', representation_size=None,
             transformer=dict(num_layers=1, mlp_dim=16, num_heads=2, dropout_rate=0.0,
                              attention_dropout_rate=0.0))
BERT = dict(hidden_size=12, intermediate_dim=20, num_hidden_layers=2, num_attention_heads=3, vocab_size=40,
            max_length=16, num_segments=2)
CORPUS = ['a photo of a red square', 'a photo of a green circle', 'itap of a blue thing',
          'art of the small cat',
          'a bad photo of the dog', 'a origami bird in a video game', 'a photo of the large truck'] * 10


def tiny_config(text_model: str) -> ml_collections.ConfigDict:
    if text_model == 'bert':
        text, pp = {'config': BERT}, dict(tokenizer_name='bert', size=16, max_len=6)
    else:
        text = dict(width=8, num_layers=1, mlp_dim=16, num_heads=2, vocab_size=64)
        pp = dict(tokenizer_name='sentencepiece', size=16, max_len=8)
    return ml_collections.ConfigDict(dict(model_name=None, out_dim=(None, 8), text_model=text_model,
                                          image=IMAGE, text=text, pp=pp))


def init(config, seed=0):
    model = build_model(config, None)
    variables = model.init(jax.random.PRNGKey(seed), images=jnp.zeros((1, 16, 16, 3)),
                           tokens=jnp.ones((1, config.pp.max_len), jnp.int32))
    # Random, not zero, heads and temperature: the tests must see them.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
        if 'head' in str(p) or str(p[-1]) == "DictKey(key='t')" else x, variables['params'])
    return model, params


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
    """A SentencePiece model trained here (unigram, </s> = 1, as the LiT vocabularies)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=64,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                   minloglevel=2)
    path = tmp_path_factory.mktemp('sp') / 'tiny.model'
    path.write_bytes(out.getvalue())
    return str(path)


BERT_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a', 'photo', 'of', 'the', 'cat', 'dog', '##s', '.', ',',
              '!',
              'un', '##believ', '##able', 'cafe', 'ss', 'fi', '1', '##1', '日', 'x', '##x', 'co', '##op', 'σ',
              'i', '-', 'red', 'green', 'blue', 'itap', 'art', 'bad', 'small', 'large', 'in', '##ing']


@pytest.fixture(scope='module')
def bert_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp('bert') / 'vocab.txt'
    path.write_text('\n'.join(BERT_VOCAB) + '\n')
    return str(path)


# --- Towers -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bert_tower_matches_transformers_bert():
    """flaxformer's BertEncoder numerics, checked against an independent BERT (transformers, PyTorch)
    with the same weights: post-LayerNorm, eps 1e-12, tanh GELU, padding keys masked."""
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    model = build_model(tiny_config('bert'), None)
    tokens = np.array([[2, 5, 6, 7, 8, 0], [2, 9, 10, 0, 0, 0]], np.int32)
    _, params = init(tiny_config('bert'))
    _, ztxt, out = model.apply({'params': params}, tokens=tokens)

    enc = jax.tree_util.tree_map(lambda x: torch.tensor(np.asarray(x)), params['txt']['BertEncoder_0'])
    ref = transformers.BertModel(transformers.BertConfig(
        vocab_size=BERT['vocab_size'], hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=20, max_position_embeddings=16, type_vocab_size=2, hidden_act='gelu_pytorch_tanh',
        layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        add_pooling_layer=False)
    sd = {'embeddings.word_embeddings.weight': enc['embedder']['embedders_token_ids']['embedding'],
          'embeddings.position_embeddings.weight': enc['embedder']['embedders_position_ids']['embedding'],
          'embeddings.token_type_embeddings.weight': enc['embedder']['embedders_segment_ids']['embedding'],
          'embeddings.LayerNorm.weight': enc['layer_norm']['scale'],
          'embeddings.LayerNorm.bias': enc['layer_norm']['bias']}
    dense = lambda p: {'weight': p['kernel'].T, 'bias': p['bias']}  # noqa: E731
    norm = lambda p: {'weight': p['scale'], 'bias': p['bias']}  # noqa: E731
    for i in range(2):
        layer = enc['encoder_block']['layer_sequence'][f'layers_{i}']
        att, mlp = layer['attention_block'], layer['mlp_block']
        parts = {'attention.self.query': dense(att['attention_layer']['query']),
                 'attention.self.key': dense(att['attention_layer']['key']),
                 'attention.self.value': dense(att['attention_layer']['value']),
                 'attention.output.dense': dense(att['dense_layer']),
                 'attention.output.LayerNorm': norm(att['layer_norm']),
                 'intermediate.dense': dense(mlp['mlp']['dense_layer']),
                 'output.dense': dense(mlp['dense_layer']),
                 'output.LayerNorm': norm(mlp['layer_norm'])}
        sd.update({f'encoder.layer.{i}.{k}.{w}': v for k, p in parts.items() for w, v in p.items()})
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all('position_ids' in k or 'token_type_ids' in k for k in missing)
    with torch.no_grad():
        hidden = ref(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(tokens != 0, dtype=torch.long)).last_hidden_state.numpy()
    real = tokens != 0
    np.testing.assert_allclose(np.asarray(out['txt/transformed'])[real], hidden[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out['txt/pre_logits'], hidden[:, 0], rtol=1e-5, atol=1e-5)
    # The [CLS] embedding through the head, L2-normalised.
    head = params['txt']['head']
    z = hidden[:, 0] @ np.asarray(head['kernel']) + np.asarray(head['bias'])
    np.testing.assert_allclose(ztxt, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('text_model', ['bert', 'text_transformer'])
def test_lit_outputs(text_model):
    config = tiny_config(text_model)
    model, params = init(config)
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 3), minval=-1, maxval=1)
    tokens = jnp.array([[2, 5, 6, 7, 0, 0, 0, 0][:config.pp.max_len]] * 2)
    zimg, ztxt, out = model.apply({'params': params}, images=images, tokens=tokens)
    assert zimg.shape == (3, 8) and ztxt.shape == (2, 8)        # out_dim (None, 8): the image tower's width
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(out['t'], np.exp(params['t']), rtol=1e-6)
    assert 'head' not in params['img'] and 'head' in params['txt']
    # Either input alone, as the original (few-shot on images, text embeddings for labels).
    zimg2, none, _ = model.apply({'params': params}, images=images)
    assert none is None
    np.testing.assert_allclose(zimg2, zimg, rtol=1e-6)
    # out_dim as one int gives both towers a head.
    config = ml_collections.ConfigDict({**config.to_dict(), 'out_dim': 8})
    assert 'head' in build_model(config, None).init(
        jax.random.PRNGKey(0), images=images, tokens=tokens)['params']['img']


def test_get_model_lit_takes_no_num_classes():
    assert get_model('LiT-B16B').pp.max_len == 16            # the original's `models.get_model(name)`
    with pytest.raises(ConfigError, match='LiT models have no num_classes'):
        get_model('LiT-B16B', num_classes=10)


def test_vit_train_refuses_a_lit_model():
    from vit_jax import resolve
    from vit_jax.configs import common
    config = common.with_dataset(common.get_config(), 'cifar10')
    config.model = get_config('LiT-B16B')
    with pytest.raises(ConfigError, match="the LiT image-text model 'LiT-B16B': vit-train trains image "):
        resolve.resolve(config)


# --- Tokenizers against the original's (tensorflow_text) ------------------------------------------

def _tensorflow_text():
    """The original's tokenizer library (installed by scripts/setup_env.sh for the tests, --no-deps)."""
    return pytest.importorskip('tensorflow_text')


def _original_bert(vocab_path, max_len, texts):
    """The original's preprocess.BertTokenizer._preprocess, verbatim in substance."""
    tensorflow_text = _tensorflow_text()
    tokenizer = tensorflow_text.BertTokenizer(vocab_path, token_out_type=tf.int32, lower_case=True)
    vocab = open(vocab_path).read().split('\n')
    token_ids = tokenizer.tokenize(tf.constant(texts))
    tokens, _ = tensorflow_text.pad_model_inputs(token_ids, max_len - 1)
    return tf.concat([tf.fill([len(texts), 1], vocab.index('[CLS]')), tokens], axis=1).numpy()


def _fuzz_texts(n, seed=0):
    """Mixed scripts, accents, ligatures, full-width forms, CJK, emoji, control / format / ignorable
    characters, odd whitespace (U+2028, U+3000, NBSP): where BERT lower-casing implementations differ."""
    rng = random.Random(seed)
    ranges = [(32, 127)] * 3 + [(0xa0, 0x250), (0x370, 0x460), (0x3040, 0x30ff), (0x4e00, 0x4e40)]
    pool = [chr(c) for lo, hi in ranges for c in range(lo, hi)]
    pool += [chr(c) for c in (0xad, 0x200b, 0x200d, 0xfeff, 0x2028, 0x3000, 0x85, 0x1f600, 0xff21, 0xfb01,
                              0x2163, 0x1e9e, 0x130, 0x345, 0x1c5, 0x301, 0x308, 0xe000, 0x9, 0xa, 0xd, 0x7f,
                              0x2060, 0x180e)]
    texts = [''.join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(n)]
    return texts + ['x' * 101, 'é' * 51, 'é' * 50, 'ﬁ', 'Straße', 'ΣΑΣ', 'İ', 'co\u00adop', 'a\u2028b', '']


def test_bert_tokenizer_matches_tensorflow_text(tmp_path):
    texts = _fuzz_texts(1500)
    # A vocabulary of the folded characters (and ## continuations), so that most words have pieces.
    chars = sorted({unicodedata.normalize('NFKC', c).casefold() for t in texts for c in t if c.strip()})
    pieces = chars + ['##' + c for c in chars[:150]]
    vocab = list(dict.fromkeys(['[PAD]', '[UNK]', '[CLS]', '[SEP]'] + pieces))
    path = tmp_path / 'vocab.txt'
    path.write_text('\n'.join(vocab) + '\n')
    ours = preprocess.BertTokenizer(vocab_path=str(path), max_len=16)
    reference = _original_bert(str(path), 16, texts)
    mismatches = [t for t, got, want in zip(texts, ours(texts), reference, strict=True)
                  if (got != want).any()]
    assert not mismatches, f'{len(mismatches)} of {len(texts)} texts differ, e.g. {mismatches[:3]!r}'


def test_bert_tokenizer_rules(bert_vocab, tmp_path):
    tok = preprocess.BertTokenizer(vocab_path=bert_vocab, max_len=6)
    texts = ['A photo of the CATS!', 'unbelievable', 'Café', 'a photo of a photo of a dog', '']
    np.testing.assert_array_equal(tok(texts), _original_bert(bert_vocab, 6, texts))
    assert tok(['a photo of a photo of a dog'])[0].tolist() == [2, 4, 5, 6, 4, 5]    # [CLS] + 5, truncated
    assert tok([''])[0].tolist() == [2, 0, 0, 0, 0, 0]                                # zero padding
    # A vocabulary without [UNK]: unknown words get the id after the vocabulary (tensorflow_text's
    # out-of-vocabulary bucket).
    (tmp_path / 'nounk.txt').write_text('[PAD]\n[CLS]\nsome\n')
    assert preprocess.BertTokenizer(str(tmp_path / 'nounk.txt'), 3)(['some zzz']).tolist() == [[1, 2, 3]]
    (tmp_path / 'dup.txt').write_text('[PAD]\n[CLS]\nsome\nsome\n')
    with pytest.raises(DataError, match=r"dup.txt: line 4 repeats the token 'some' of line 3"):
        preprocess.BertTokenizer(str(tmp_path / 'dup.txt'), 3)
    (tmp_path / 'nocls.txt').write_text('[PAD]\nsome\n')
    with pytest.raises(DataError, match='nocls.txt: the vocabulary has no \\[CLS\\] token'):
        preprocess.BertTokenizer(str(tmp_path / 'nocls.txt'), 3)
    (tmp_path / 'latin1.txt').write_bytes(b'[PAD]\n[CLS]\ncaf\xe9\n')
    with pytest.raises(DataError, match='latin1.txt: not a UTF-8 vocabulary file'):
        preprocess.BertTokenizer(str(tmp_path / 'latin1.txt'), 3)
    with pytest.raises(FileNotFoundError, match='no such vocabulary file'):
        preprocess.BertTokenizer(str(tmp_path / 'missing.txt'), 3)


def test_sentencepiece_tokenizer_matches_the_original(sp_model, tmp_path):
    """The original: tensorflow_text's SentencepieceTokenizer(add_eos=True), cut to max_len - 1,
    padded with </s> (so the last token is always </s>)."""
    reference = _tensorflow_text().SentencepieceTokenizer(model=open(sp_model, 'rb').read(), add_eos=True)
    eos = int(reference.string_to_id('</s>'))
    texts = CORPUS[:7] + ['a', '', 'a photo of the small red circle in a video game, a bad photo']
    texts += _fuzz_texts(200)
    for max_len in (3, 8, 16):
        ours = preprocess.SentencepieceTokenizer(vocab_path=sp_model, max_len=max_len)
        assert ours.eos_token == eos == 1
        for text, got in zip(texts, ours(texts), strict=True):
            tokens = reference.tokenize(tf.constant(text))[:max_len - 1]
            want = tf.pad(tokens, [(0, max_len - tf.shape(tokens)[0])], constant_values=eos).numpy()
            np.testing.assert_array_equal(got, want, err_msg=repr(text))
            assert got[-1] == eos
    (tmp_path / 'bad.model').write_bytes(b'not a model')
    with pytest.raises(DataError, match='bad.model: not a SentencePiece model'):
        preprocess.SentencepieceTokenizer(str(tmp_path / 'bad.model'), 8)


def test_get_pp_in_tf_data(sp_model):
    pp = preprocess.get_pp(tokenizer_name='sentencepiece', vocab_path=sp_model, max_len=8, size=16)
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), np.uint8)
    ds = tf.data.Dataset.from_tensor_slices({'text': ['a red square', 'itap of a dog'], 'image': images})
    batch = next(iter(ds.map(pp).batch(2).as_numpy_iterator()))
    tokenizer = preprocess.SentencepieceTokenizer(sp_model, 8)
    np.testing.assert_array_equal(batch['tokens'], tokenizer(['a red square', 'itap of a dog']))
    np.testing.assert_allclose(batch['image'], preprocess.PreprocessImages(16)(list(images)))
    assert batch['image'].shape == (2, 16, 16, 3) and batch['tokens'].dtype == np.int32


# --- The public .npz through the one loader --------------------------------------------------------

def _save_public(params, path):
    """The public LiT layout: one flat npz, '/'-joined keys (img/..., txt/..., t), no prefix."""
    checkpoint.save(params, str(path))
    with np.load(path) as f:
        assert 't' in f.files and any(k.startswith('img/Transformer/encoderblock_0/') for k in f.files)


@pytest.mark.slow
def test_text_transformer_npz_loads_with_nothing_stated(sp_model, tmp_path):
    config = tiny_config('text_transformer')
    _, params = init(config)
    _save_public(params, tmp_path / 'tiny.npz')
    found = loader.read(str(tmp_path / 'tiny.npz'))
    assert found.model_config.text_model == 'text_transformer'
    assert found.model_config.text.to_dict() == config.text.to_dict()
    assert tuple(found.model_config.out_dim) == (None, 8)
    assert found.model_config.pp.to_dict() == config.pp.to_dict()     # size 16 from the posemb, 8 tokens
    with pytest.raises(CheckpointError, match='takes 8 tokens'):
        loader.read(str(tmp_path / 'tiny.npz'), Facts(max_len=16))
    with pytest.raises(CheckpointError, match='LiT image-text model: classify with it zero-shot'):
        loader.load_model(str(tmp_path / 'tiny.npz'))


@pytest.mark.slow
def test_bert_npz_needs_heads_and_length(tmp_path):
    config = tiny_config('bert')
    _, params = init(config)
    _save_public(params, tmp_path / 'bert.npz')
    with pytest.raises(CheckpointError, match=r'bert.npz: a BERT text tower records neither its '
                                              r'attention heads nor its token length; name the model '
                                              r'\(--model LiT-B16B'):
        loader.read(str(tmp_path / 'bert.npz'))
    found = loader.read(str(tmp_path / 'bert.npz'), Facts(text_heads=3, max_len=6))
    assert found.model_config.text.config.to_dict() == BERT
    with pytest.raises(CheckpointError, match='text width 12 is not divisible by --text-heads 5'):
        loader.read(str(tmp_path / 'bert.npz'), Facts(text_heads=5, max_len=6))
    with pytest.raises(CheckpointError, match=r'--max-len 17 is not in \[2, 16\]'):
        loader.read(str(tmp_path / 'bert.npz'), Facts(text_heads=3, max_len=17))
    # A named model must match the weights: a tiny file is not LiT-B16B, by --model or by its name.
    with pytest.raises(CheckpointError, match='does not match the model'):
        loader.read(str(tmp_path / 'bert.npz'), Facts(model_name='LiT-B16B'))
    os.replace(tmp_path / 'bert.npz', tmp_path / 'LiT-B16B.npz')
    with pytest.raises(CheckpointError, match='LiT-B16B.npz does not match the model'):
        loader.read(str(tmp_path / 'LiT-B16B.npz'))
    with pytest.raises(ConfigError, match="--model 'ViT-B_16' is not a LiT model"):
        loader.read(str(tmp_path / 'LiT-B16B.npz'), Facts(model_name='ViT-B_16'))


def test_siglip_two_tower_file_reads_both_towers_and_serves_its_image_tower(tmp_path):
    """A big_vision SigLIP file (img/ + txt/ towers, temperature t and bias b) is read whole, as a SigLIP
    model (vit-zeroshot; tests/test_siglip.py checks it against transformers); vit-predict and features
    get its image tower, with a warning saying so."""
    _, params = init(tiny_config('text_transformer'))
    flat = {f'params/{k}': np.asarray(v) for k, v in trees.flatten(params).items()}
    flat['params/b'] = np.zeros((1,), np.float32)
    np.savez(tmp_path / 'siglip.npz', **flat)
    found = loader.read(str(tmp_path / 'siglip.npz'))
    assert found.format == 'big_vision' and loader.is_siglip(found.model_config)
    assert trees.flatten(found.params).keys() == trees.flatten({**params, 'b': 0}).keys()
    with pytest.warns(UserWarning, match='siglip.npz: a two-tower SigLIP model; using its image tower'):
        loaded = loader.load_model(str(tmp_path / 'siglip.npz'))
    assert trees.flatten(loaded.params).keys() == trees.flatten(params['img']).keys()


def test_catalogue_names_and_vocabulary_download(tmp_path, monkeypatch):
    names = hub.catalogue()
    assert names['LiT-B16B'] == names['lit/LiT-B16B'] == 'gs://vit_models/lit/LiT-B16B.npz'
    assert names['lit/LiT-B16B.txt'] == 'gs://vit_models/lit/LiT-B16B.txt'
    assert names['lit/LiT-L16Ti.model'] == 'gs://vit_models/lit/LiT-L16Ti.model'
    # The public vocabulary of a named model whose file has none beside it: downloaded, verified, cached.
    root = tmp_path / 'bucket'
    (root / 'vit_models' / 'lit').mkdir(parents=True)
    (root / 'vit_models' / 'lit' / 'LiT-B16B.txt').write_text('\n'.join(BERT_VOCAB) + '\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    handler.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv('VIT_JAX_HUB_URL', f'http://127.0.0.1:{httpd.server_address[1]}')
        monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
        found = loader.Checkpoint(get_config('LiT-B16B'), {}, 'npz', str(tmp_path / 'mine.npz'))
        path = zeroshot.vocab_path(found, 'mine.npz')
        assert path.startswith(str(tmp_path / 'cache'))
        assert open(path).read().split()[:2] == ['[PAD]', '[UNK]']
        assert os.path.exists(hub.record_path(path))
        # One beside the weights wins; a stated one wins over both.
        (tmp_path / 'mine.txt').write_text('[PAD]\n[CLS]\n')
        assert zeroshot.vocab_path(found, 'mine.npz') == str(tmp_path / 'mine.txt')
        mine = str(tmp_path / 'mine.txt')
        assert zeroshot.vocab_path(found, 'mine.npz', mine) == mine
    finally:
        httpd.shutdown()
        httpd.server_close()
    nameless = loader.Checkpoint(tiny_config('bert'), {}, 'npz', str(tmp_path / 'other.npz'))
    with pytest.raises(CheckpointError, match=r'other.npz: no vocabulary: give --vocab FILE \(a .txt file\) '
                                              r'or put other.txt beside the weights'):
        zeroshot.vocab_path(nameless, 'other.npz')


# --- Zero-shot end to end --------------------------------------------------------------------------

@pytest.fixture
def tiny_lit(sp_model, tmp_path):
    """A tiny LiT (TextTransformer + SentencePiece) in the public layout, its vocabulary beside it,
    and images: two solid colours, one unreadable file."""
    config = tiny_config('text_transformer')
    model, params = init(config)
    _save_public(params, tmp_path / 'tiny.npz')
    (tmp_path / 'tiny.model').write_bytes(open(sp_model, 'rb').read())
    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.new('RGB', (20, 30), (200, 30, 30)).save(photos / 'red.png')
    Image.new('RGB', (40, 24), (30, 200, 30)).save(photos / 'green.jpg')
    (photos / 'broken.png').write_bytes(b'not an image')
    return model, params, tmp_path


def test_vit_zeroshot_cli_end_to_end(tiny_lit, sp_model, capsys):
    model, params, tmp = tiny_lit
    code = zeroshot.main([str(tmp / 'photos'), '--checkpoint', str(tmp / 'tiny.npz'),
                          '--labels', 'red,green,blue', '--json', '--top-k', '3'])
    assert code == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert [os.path.basename(r['path']) for r in doc['results']] == ['green.jpg', 'red.png']
    assert [os.path.basename(s['path']) for s in doc['skipped']] == ['broken.png'] and 'broken.png' in out.err
    assert doc['templates'] == list(zeroshot.PROMPTS) and doc['labels'] == ['red', 'green', 'blue']

    # The same numbers computed here from the model, the original's tokenizer and image preprocessing.
    tokenizer = preprocess.SentencepieceTokenizer(sp_model, 8)
    texts = [t.format(label) for label in ('red', 'green', 'blue') for t in zeroshot.PROMPTS]
    _, ztxt, out_ = model.apply({'params': params}, tokens=tokenizer(texts))
    labels = np.asarray(ztxt).reshape(3, len(zeroshot.PROMPTS), -1).mean(axis=1)
    for result in doc['results']:
        image = tf.io.decode_image(open(result['path'], 'rb').read(), channels=3).numpy()
        zimg, _, _ = model.apply({'params': params}, images=preprocess.PreprocessImages(16)([image]))
        probs = np.asarray(jax.nn.softmax(out_['t'] * np.asarray(zimg) @ labels.T))[0]
        got = {p['label']: p['probability'] for p in result['predictions']}
        np.testing.assert_allclose([got[k] for k in ('red', 'green', 'blue')], probs, rtol=1e-4)
        assert [p['rank'] for p in result['predictions']] == [1, 2, 3]

    # Text output, a label file and the bare label as the template.
    (tmp / 'labels.txt').write_text('red\ngreen\n')
    assert zeroshot.main([str(tmp / 'photos' / 'red.png'), '--checkpoint', str(tmp / 'tiny.npz'),
                          '--labels', str(tmp / 'labels.txt'), '--templates', 'none']) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith('red.png') and '%' in text


def test_a_vocabulary_larger_than_the_text_tower_is_refused(tiny_lit):
    _, _, tmp = tiny_lit
    words = [f'w{i}' for i in range(70)]   # the tower embeds 64 tokens
    (tmp / 'big.txt').write_text('\n'.join(['[PAD]', '[CLS]', *words]) + '\n')
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=100,
                                   user_defined_symbols=words, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (tmp / 'big.model').write_bytes(out.getvalue())
    size = preprocess.SentencepieceTokenizer(str(tmp / 'big.model'), 8).vocab_size
    assert size > 73
    with pytest.raises(CheckpointError, match=rf'big.model: the vocabulary gives ids up to {size - 1} '
                                              r'but the text tower embeds 64 tokens'):
        zeroshot.load(str(tmp / 'tiny.npz'), vocab=str(tmp / 'big.model'))
    assert preprocess.BertTokenizer(str(tmp / 'big.txt'), 8).vocab_size == 73   # 72 lines + [UNK]


def test_python_api_matches_the_cli(tiny_lit):
    model, params, tmp = tiny_lit
    zs = zeroshot.load(str(tmp / 'tiny.npz'))
    image = np.asarray(Image.open(tmp / 'photos' / 'red.png'))
    probs = zs.classify(zs.image_preprocessing()([image]), ['red', 'green'])
    doc = zeroshot.classify_files(zs, [str(tmp / 'photos' / 'red.png')], ['red', 'green'])
    predictions = sorted(doc['results'][0]['predictions'], key=lambda p: p['index'])
    np.testing.assert_allclose([p['probability'] for p in predictions], probs[0], rtol=1e-5)
    assert zs.variables['params'] is zs.params
    assert zs.temperature == pytest.approx(float(np.exp(params['t'][0])))


@pytest.mark.parametrize('argv, message', [
    (['--labels', 'one.txt'], 'needs at least 2 labels, got 1'),
    (['--labels', 'cat,,dog'], "has an empty label"),
    (['--labels', 'cat,dog', '--templates', 'nosuch'],
     "--templates 'nosuch' is neither lit nor none nor a file"),
    (['--labels', 'cat,dog', '--vocab', 'missing.model'], 'missing.model: no such file'),
    (['--labels', 'cat,dog', '--top-k', '0'], 'argument --top-k: expected a positive integer, got 0'),
])
def test_vit_zeroshot_bad_input(tiny_lit, argv, message, capsys, monkeypatch):
    _, _, tmp = tiny_lit
    monkeypatch.chdir(tmp)
    (tmp / 'one.txt').write_text('cat\n')
    with pytest.raises(SystemExit) as exit_:
        zeroshot.run([str(tmp / 'photos'), '--checkpoint', str(tmp / 'tiny.npz'), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('vit-zeroshot: error: ') and message in err and '\n' not in err


def test_lit_converts_to_npz_only(tiny_lit, capsys):
    from vit_jax import convert
    _, params, tmp = tiny_lit
    assert convert.main([str(tmp / 'tiny.npz'), str(tmp / 'copy.npz')]) == 0
    assert 'detected: LiT .npz' in capsys.readouterr().out
    copy = loader.read(str(tmp / 'copy.npz'))
    jax.tree_util.tree_map(np.testing.assert_array_equal, copy.params,
                           jax.tree_util.tree_map(np.asarray, params))
    refused = ([str(tmp / 'x.safetensors')], [str(tmp / 'hf_dir')],
               [str(tmp / 'x.npz'), '--num-classes', '3'])
    for argv in refused:
        with pytest.raises(CheckpointError, match='is a LiT image-text model: timm and Hugging Face'):
            convert.main([str(tmp / 'tiny.npz'), *argv])
    with pytest.raises(CheckpointError, match='timm has no LiT image-text model'):
        convert.export(params, copy.model_config, str(tmp / 'x.safetensors'), format='timm')
    assert not os.path.exists(tmp / 'x.safetensors') and not os.path.exists(tmp / 'hf_dir')


def test_templates_file(tmp_path):
    (tmp_path / 'ok.txt').write_text('a photo of a {}.\n\nart of the {}.\n')
    assert zeroshot.read_templates(str(tmp_path / 'ok.txt')) == ('a photo of a {}.', 'art of the {}.')
    (tmp_path / 'bad.txt').write_text('a photo of a {}.\nno slot here\n')
    with pytest.raises(ConfigError, match="template 'no slot here' must contain exactly one"):
        zeroshot.read_templates(str(tmp_path / 'bad.txt'))
