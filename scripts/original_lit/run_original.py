"""Runs the ORIGINAL vit_jax LitModel (google-research/vision_transformer + flaxformer) on tiny configs and
writes their parameters (the public flat .npz layout) and outputs, for compare.py (see run.sh)."""

import sys

import jax
import ml_collections
import numpy as np

from vit_jax import models_lit  # the original's: run.sh puts its checkout first on the path

IMAGE = dict(model_name='tiny', patches=dict(size=(4, 4)), hidden_size=8, classifier='token',
             representation_size=None, transformer=dict(num_layers=1, mlp_dim=16, num_heads=2,
                                                        dropout_rate=0.0, attention_dropout_rate=0.0))
TEXT_TOWERS = (   # name, text_model, text, max_len
    ('text_transformer', 'text_transformer',
     dict(width=8, num_layers=2, mlp_dim=16, num_heads=2, vocab_size=64), 8),
    ('bert_base', 'bert', dict(config='base'), 16),
)


def main(out_dir: str) -> None:
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    for name, text_model, text, max_len in TEXT_TOWERS:
        pp = ml_collections.ConfigDict(dict(tokenizer_name='-', size=16, max_len=max_len))
        model = models_lit.LitModel(image=ml_collections.ConfigDict(IMAGE), text_model=text_model,
                                    text=ml_collections.ConfigDict(text), pp=pp, out_dim=(6, 10),
                                    model_name=name)
        tokens = np.array([[2, 5, 6, 7] + [0] * (max_len - 4), [2, 9] + [0] * (max_len - 2)], np.int32)
        variables = model.init(jax.random.PRNGKey(0), images=images, tokens=tokens)
        # Perturbed, so that zero-initialised heads, biases and the temperature are exercised too.
        leaves, treedef = jax.tree_util.tree_flatten(variables['params'])
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        params = jax.tree_util.tree_unflatten(
            treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])
        zimg, ztxt, out = model.apply({'params': params}, images=images, tokens=tokens)
        flat = {'/'.join(str(k.key) for k in path): np.asarray(x)
                for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(f'{out_dir}/{name}.npz', **flat)
        np.savez(f'{out_dir}/{name}_out.npz', images=images, tokens=tokens, zimg=zimg, ztxt=ztxt, t=out['t'])
        print(f'original {name}: zimg {zimg.shape}, ztxt {ztxt.shape}')


if __name__ == '__main__':
    main(sys.argv[1])
