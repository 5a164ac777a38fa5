"""SigLIP image-text models: both towers from transformers' SiglipModel directories and big_vision
npz files, checked against transformers' own forward and SiglipTokenizer; sigmoid zero-shot scoring."""

import io
import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from vit_jax import convert, preprocess, trees, zeroshot
from vit_jax.checkpoint import hf, loader
from vit_jax.errors import CheckpointError
from vit_jax.models import build_model, family

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TOLERANCE = 1e-5   # max abs error, float32
MAX_LEN = 8
TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=MAX_LEN, projection_size=24)
VISION = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
CORPUS = ['a photo of a cat', 'a photo of a dog', 'an airplane in the sky', 'a red apple on a table',
          'the quick brown fox jumps over the lazy dog', 'two guys in need of caffeine',
          'zurich and the alps',
          'a cow on the beach', 'autumn in toronto', 'a robot on a sign'] * 10
TEXTS = ['a photo of a Cat.', 'Zürich, and the ALPS!!', '  two   guys ', 'dog', 'A cow_on the beach?',
         'the quick brown fox jumps over the lazy dog', 'x', '\u2581sky', 'robots & signs: 100% (maybe)', '',
         '!!!', 'a\tb\nc', 'ÀB']
LABELS = ['a cat', 'a dog', 'an apple']


@pytest.fixture(scope='module')
def siglip_dir(tmp_path_factory):
    """A random tiny SiglipModel saved by transformers (safetensors) with its SiglipTokenizer, over a
    SentencePiece model trained here; the learned scale and bias set to SigLIP-like values."""
    root = tmp_path_factory.mktemp('siglip')
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out,
                                   vocab_size=TEXT['vocab_size'], pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (root / 'sp.model').write_bytes(out.getvalue())
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-1.5)
    directory = root / 'hf'
    model.save_pretrained(directory)
    transformers.SiglipTokenizer(vocab_file=str(root / 'sp.model'),
                                 model_max_length=MAX_LEN).save_pretrained(directory)
    assert (directory / 'model.safetensors').exists() and (directory / 'spiece.model').exists()
    return directory


def _images(n=3, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)


def _reference(directory, images_uint8, texts):
    """transformers' SiglipModel forward: (image_embeds, text_embeds, logits_per_image)."""
    model = transformers.SiglipModel.from_pretrained(directory).eval()
    tokenizer = transformers.SiglipTokenizer.from_pretrained(directory)
    ids = tokenizer(texts, padding='max_length', truncation=True, return_tensors='pt')['input_ids']
    pixels = torch.from_numpy(images_uint8.astype(np.float32) / 255 * 2 - 1).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def _ours(found, images_uint8, tokens):
    model = build_model(found.model_config, None)
    pixels = images_uint8.astype(np.float32) / 255 * 2 - 1
    zimg, ztxt, out = model.apply({'params': found.params}, images=pixels, tokens=tokens)
    return np.asarray(zimg), np.asarray(ztxt), np.asarray(zimg @ ztxt.T * out['t'] + out['b'])


def _max_err(got, want, label):
    """The max abs error (printed with the relative one, max abs error / max abs value, the docs' measure)."""
    err = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    print(f'\nmax abs error [{label}]: {err:.2e} (relative {err / float(np.abs(want).max()):.2e})')
    return err


def _hf_tokenizer(directory):
    facts = hf.hf_siglip_tokenizer(str(directory))
    facts.pop('max_len')
    return preprocess.SentencepieceTokenizer(max_len=MAX_LEN, canonical='transformers', **facts)


@pytest.mark.slow
def test_hf_siglip_model_matches_transformers(siglip_dir):
    """Both towers, the temperature and the bias of an HF SiglipModel load into one LitModel tree whose
    embeddings and logits are transformers'."""
    found = loader.read(str(siglip_dir))
    assert found.format == 'hf' and family(found.model_config) == 'LiT'
    assert loader.is_siglip(found.model_config)
    config = found.model_config
    assert config.out_dim == (None, TEXT['projection_size']) and config.pp.max_len == MAX_LEN
    assert config.image.classifier == 'map' and config.text.gelu_approximate and config.text.num_heads == 2
    images = _images()
    want = _reference(siglip_dir, images, TEXTS)
    got = _ours(found, images, _hf_tokenizer(siglip_dir)(TEXTS))
    labels = ('image embeddings', 'text embeddings', 'logits_per_image')
    for g, w, label in zip(got, want, labels, strict=True):
        assert g.shape == w.shape
        assert _max_err(g, w, f'HF SiglipModel {label}') <= TOLERANCE


def test_tokenizer_matches_siglip_tokenizer(siglip_dir):
    """The SigLIP tokenizer from the directory's spiece.model and tokenizer_config.json gives transformers'
    SiglipTokenizer ids (padding='max_length', truncation): canonicalised text, a sticky </s>, </s>
    padding."""
    ours = _hf_tokenizer(siglip_dir)
    theirs = transformers.SiglipTokenizer.from_pretrained(siglip_dir)
    want = theirs(TEXTS, padding='max_length', truncation=True)['input_ids']
    np.testing.assert_array_equal(ours(TEXTS), np.asarray(want))
    assert (ours(TEXTS)[:, -1] == ours.eos_token).all()   # the tower reads the last token
    # What tokenizer_config.json records is followed: no lower-casing.
    config = json.loads((siglip_dir / 'tokenizer_config.json').read_text())
    cased = siglip_dir.parent / 'cased'
    shutil.copytree(siglip_dir, cased)
    (cased / 'tokenizer_config.json').write_text(json.dumps({**config, 'do_lower_case': False}))
    facts = hf.hf_siglip_tokenizer(str(cased))
    assert facts['lower'] is False and facts['max_len'] == MAX_LEN
    theirs = transformers.SiglipTokenizer.from_pretrained(cased)
    want = theirs(TEXTS, padding='max_length', truncation=True)['input_ids']
    np.testing.assert_array_equal(_hf_tokenizer(cased)(TEXTS), np.asarray(want))


def _big_vision_npz(directory, path, scan_text=True):
    """The HF weights written under big_vision's two_towers names (image tower: vit.py with
    pool_type='map' and no head; text tower: text_transformer.py, scan-stacked blocks with `scan_text`)."""
    sd = {k: v.numpy() for k, v in transformers.SiglipModel.from_pretrained(directory).state_dict().items()}
    flat = {}

    def block(prefix, src, heads, d):
        hd = d // heads
        names = {'q': 'query', 'k': 'key', 'v': 'value'}
        attn, out = f'{src}.self_attn', {}
        for n, name in names.items():
            w, b = sd[f'{attn}.{n}_proj.weight'], sd[f'{attn}.{n}_proj.bias']
            out[f'MultiHeadDotProductAttention_0/{name}/kernel'] = w.T.reshape(d, heads, hd)
            out[f'MultiHeadDotProductAttention_0/{name}/bias'] = b.reshape(heads, hd)
        w = sd[f'{attn}.out_proj.weight']
        out['MultiHeadDotProductAttention_0/out/kernel'] = w.T.reshape(heads, hd, d)
        out['MultiHeadDotProductAttention_0/out/bias'] = sd[f'{attn}.out_proj.bias']
        for i, ln in ((0, 'layer_norm1'), (1, 'layer_norm2')):
            out[f'LayerNorm_{i}/scale'] = sd[f'{src}.{ln}.weight']
            out[f'LayerNorm_{i}/bias'] = sd[f'{src}.{ln}.bias']
        for i, fc in ((0, 'fc1'), (1, 'fc2')):
            out[f'MlpBlock_0/Dense_{i}/kernel'] = sd[f'{src}.mlp.{fc}.weight'].T
            out[f'MlpBlock_0/Dense_{i}/bias'] = sd[f'{src}.mlp.{fc}.bias']
        return {f'{prefix}/{k}': v for k, v in out.items()}

    v, d = 'vision_model', VISION['hidden_size']
    flat['img/embedding/kernel'] = sd[f'{v}.embeddings.patch_embedding.weight'].transpose(2, 3, 1, 0)
    flat['img/embedding/bias'] = sd[f'{v}.embeddings.patch_embedding.bias']
    flat['img/pos_embedding'] = sd[f'{v}.embeddings.position_embedding.weight'][None]
    for i in range(VISION['num_hidden_layers']):
        flat.update(block(f'img/Transformer/encoderblock_{i}', f'{v}.encoder.layers.{i}', 2, d))
    flat['img/Transformer/encoder_norm/scale'] = sd[f'{v}.post_layernorm.weight']
    flat['img/Transformer/encoder_norm/bias'] = sd[f'{v}.post_layernorm.bias']
    flat['img/MAPHead_0/probe'] = sd[f'{v}.head.probe']
    qkv_w = np.split(sd[f'{v}.head.attention.in_proj_weight'], 3)
    qkv_b = np.split(sd[f'{v}.head.attention.in_proj_bias'], 3)
    for name, w, b in zip(('query', 'key', 'value'), qkv_w, qkv_b, strict=True):
        flat[f'img/MAPHead_0/MultiHeadDotProductAttention_0/{name}/kernel'] = w.T.reshape(d, 2, d // 2)
        flat[f'img/MAPHead_0/MultiHeadDotProductAttention_0/{name}/bias'] = b.reshape(2, d // 2)
    flat['img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel'] = \
        sd[f'{v}.head.attention.out_proj.weight'].T.reshape(2, d // 2, d)
    flat['img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias'] = sd[f'{v}.head.attention.out_proj.bias']
    flat['img/MAPHead_0/LayerNorm_0/scale'] = sd[f'{v}.head.layernorm.weight']
    flat['img/MAPHead_0/LayerNorm_0/bias'] = sd[f'{v}.head.layernorm.bias']
    for i, fc in ((0, 'fc1'), (1, 'fc2')):
        flat[f'img/MAPHead_0/MlpBlock_0/Dense_{i}/kernel'] = sd[f'{v}.head.mlp.{fc}.weight'].T
        flat[f'img/MAPHead_0/MlpBlock_0/Dense_{i}/bias'] = sd[f'{v}.head.mlp.{fc}.bias']

    t, d = 'text_model', TEXT['hidden_size']
    flat['txt/Embed_0/embedding'] = sd[f'{t}.embeddings.token_embedding.weight']
    flat['txt/pos_embedding'] = sd[f'{t}.embeddings.position_embedding.weight'][None]
    blocks = [block('', f'{t}.encoder.layers.{i}', 2, d) for i in range(TEXT['num_hidden_layers'])]
    if scan_text:   # big_vision's scan=True: one `encoderblock`, its arrays stacked on a depth axis
        flat.update({f'txt/Encoder_0/encoderblock{k}': np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        flat.update({f'txt/Encoder_0/encoderblock_{i}{k}': x
                     for i, b in enumerate(blocks) for k, x in b.items()})
    flat['txt/Encoder_0/encoder_norm/scale'] = sd[f'{t}.final_layer_norm.weight']
    flat['txt/Encoder_0/encoder_norm/bias'] = sd[f'{t}.final_layer_norm.bias']
    flat['txt/head/kernel'] = sd[f'{t}.head.weight'].T
    flat['txt/head/bias'] = sd[f'{t}.head.bias']
    flat['t'], flat['b'] = sd['logit_scale'].reshape(1), sd['logit_bias'].reshape(1)
    np.savez(path, **{f'params/{k}': np.asarray(x, np.float32) for k, x in flat.items()})


@pytest.mark.parametrize('scan_text', [True, False])
def test_big_vision_npz_gives_the_same_logits(siglip_dir, tmp_path, scan_text):
    """A big_vision SigLIP npz (params/img + params/txt + t + b) of the same weights loads both towers to
    transformers' logits; its tokenizer is the stated or beside-the-weights SentencePiece model, never
    guessed."""
    path = tmp_path / 'webli_siglip.npz'
    _big_vision_npz(siglip_dir, path, scan_text)
    found = loader.read(str(path))
    assert found.format == 'big_vision' and loader.is_siglip(found.model_config)
    images = _images()
    want = _reference(siglip_dir, images, TEXTS)
    got = _ours(found, images, _hf_tokenizer(siglip_dir)(TEXTS))
    assert _max_err(got[2], want[2], 'big_vision SigLIP npz logits_per_image') <= TOLERANCE
    message = r'webli_siglip.npz: no vocabulary: give --vocab FILE \(a \.model file\) or put '
    with pytest.raises(CheckpointError, match=message + 'webli_siglip.model beside the weights'):
        zeroshot.load(str(path))
    zs = zeroshot.load(str(path), vocab=str(siglip_dir / 'spiece.model'))
    # big_vision's zero-shot evaluator canonicalises ('_' a space too), its tokenize op lower-cases.
    assert zs.sigmoid and zs.tokenizer.canonical == 'big_vision' and zs.tokenizer.lower
    np.testing.assert_array_equal(zs.tokenizer(['A Golden_Retriever!']), zs.tokenizer(['a golden retriever']))
    shutil.copy(siglip_dir / 'spiece.model', tmp_path / 'webli_siglip.model')
    assert zeroshot.load(str(path)).tokenizer.vocab_path.endswith('webli_siglip.model')
    # vit-convert: its image tower to timm (saying so), both towers to .npz.
    assert convert.main([str(path), str(tmp_path / 'image.safetensors')]) == 0
    assert trees.flatten(loader.read(str(tmp_path / 'image.safetensors')).params).keys() == \
        trees.flatten(found.params['img']).keys()


def _write_images(directory):
    directory.mkdir()
    for i, image in enumerate(_images(2, seed=1)):
        Image.fromarray(image).save(directory / f'{i}.png')
    return sorted(str(p) for p in directory.iterdir())


@pytest.mark.slow
def test_vit_zeroshot_scores_siglip_with_sigmoids(siglip_dir, tmp_path, capsys):
    """vit-zeroshot on an HF SiglipModel directory: the label itself as the prompt, and per label
    sigmoid(t * image . label + b), transformers' logits_per_image through a sigmoid; LiT stays softmax."""
    files = _write_images(tmp_path / 'photos')
    assert zeroshot.main([str(tmp_path / 'photos'), '--checkpoint', str(siglip_dir),
                          '--labels', ','.join(LABELS), '--json', '--top-k', '3']) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc['scoring'] == 'sigmoid' and doc['templates'] == ['{}']
    assert doc['bias'] == pytest.approx(-1.5) and doc['temperature'] == pytest.approx(10.0, rel=1e-6)
    images = np.stack([np.asarray(Image.open(f)) for f in files])
    want = 1 / (1 + np.exp(-_reference(siglip_dir, images, LABELS)[2]))
    for result, row in zip(doc['results'], want, strict=True):
        got = {p['label']: p['probability'] for p in result['predictions']}
        got = [got[name] for name in LABELS]
        assert _max_err(got, row, 'vit-zeroshot sigmoid probabilities') <= TOLERANCE
    assert zeroshot.main([files[0], '--checkpoint', str(siglip_dir), '--labels', ','.join(LABELS)]) == 0
    text = capsys.readouterr().out
    assert "(sigmoid scores: each label's probability on its own (SigLIP); they need not sum to 1)" in \
        text.splitlines()
    # The Python API scores the same way; several templates are averaged and renormalised.
    zs = zeroshot.load(str(siglip_dir))
    pixels = images.astype(np.float32) / 255 * 2 - 1
    np.testing.assert_allclose(zs.classify(pixels, LABELS), want, atol=TOLERANCE)
    embeddings = zs.label_embeddings(LABELS, ('a photo of {}.', '{}'))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-6)


def test_image_tower_alone_for_vit_predict(siglip_dir):
    """A user who wants the image tower of a SigLIP file (vit-predict, features) gets it, with a warning:
    the attention-pooled image features, transformers' vision pooler output."""
    with pytest.warns(UserWarning, match='a two-tower SigLIP model; using its image tower'):
        loaded = loader.load_model(str(siglip_dir))
    assert loaded.num_classes is None and loaded.image_size == 32
    images = _images()
    model = transformers.SiglipModel.from_pretrained(siglip_dir).eval()
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=torch.from_numpy(
            images.astype(np.float32) / 255 * 2 - 1).permute(0, 3, 1, 2)).pooler_output.numpy()
    ours = loaded.model.apply({'params': loaded.params}, images.astype(np.float32) / 255 * 2 - 1, train=False)
    assert _max_err(ours, pooled, 'SigLIP image tower features') <= TOLERANCE


def test_vit_convert_keeps_both_towers_in_npz_and_the_image_tower_elsewhere(siglip_dir, tmp_path, capsys):
    """vit-convert: to .npz both towers (read back as the same SigLIP model); to timm the image tower,
    saying so."""
    assert convert.main([str(siglip_dir), str(tmp_path / 'siglip.npz')]) == 0
    found, back = loader.read(str(siglip_dir)), loader.read(str(tmp_path / 'siglip.npz'))
    assert loader.is_siglip(back.model_config) and back.model_config.to_dict() == found.model_config.to_dict()
    want, got = trees.flatten(found.params), trees.flatten(back.params)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    capsys.readouterr()
    assert convert.main([str(siglip_dir), str(tmp_path / 'image.safetensors')]) == 0
    assert 'note: a two-tower SigLIP model: converting its image tower' in capsys.readouterr().out
    assert trees.flatten(loader.read(str(tmp_path / 'image.safetensors')).params).keys() == \
        trees.flatten(found.params['img']).keys()


def _variant(siglip_dir, tmp_path, config=None, tokenizer_config=None, drop=()):
    directory = tmp_path / 'variant'
    shutil.copytree(siglip_dir, directory)
    for name, change in (('config.json', config), ('tokenizer_config.json', tokenizer_config)):
        if change is not None:
            record = json.loads((directory / name).read_text())
            (directory / name).write_text(json.dumps(change(record)))
    for name in drop:
        (directory / name).unlink()
    return directory


def _text_config(**fields):
    return lambda record: {**record, 'text_config': {**record['text_config'], **fields}}


@pytest.mark.parametrize('change, message', [
    (dict(drop=('spiece.model',)), r'variant: no spiece.model \(the SentencePiece model of the text tower\): '
                                   r'give --vocab FILE$'),
    (dict(config=lambda r: {**r, 'model_type': 'siglip2'}),
     r"variant/config.json: model_type='siglip2': SigLIP 2 with NaFlex .* is not supported"),
    (dict(config=_text_config(hidden_act='relu')),
     r"variant/config.json \(text_config\): hidden_act='relu' is not supported"),
    (dict(config=_text_config(vocab_size=99)),
     r'variant/config.json \(text_config\): vocab_size=99 but the weights have 64$'),
    (dict(config=_text_config(max_position_embeddings=16)),
     r'variant/config.json \(text_config\): max_position_embeddings=16 but the weights have 8$'),
    (dict(config=lambda r: {**r, 'vision_config': {**r['vision_config'], 'image_size': 64}}),
     r'variant/config.json \(vision_config\): image_size=64 but the position embedding is for a 4x4 grid'),
    (dict(tokenizer_config=lambda r: {**r, 'model_max_length': 16}),
     r"variant/tokenizer_config.json: model_max_length=16 but the text tower's position embedding has 8 "
     r'positions$'),
    (dict(tokenizer_config=lambda r: {**r, 'tokenizer_class': 'GemmaTokenizer'}),
     r"variant/tokenizer_config.json: tokenizer_class='GemmaTokenizer' is not supported"),
])
def test_refusals_name_the_file_and_field(siglip_dir, tmp_path, change, message):
    directory = _variant(siglip_dir, tmp_path, **change)
    with pytest.raises(CheckpointError, match=message) as e:
        zeroshot.load(str(directory))
    assert '\n' not in str(e.value)
