"""Prints every named ViT and Mixer config with its parameter count (1000 classes, 224 px).

    python -m vit_jax.models            # the tables in the README come from this
"""

import jax
import jax.numpy as jnp

from vit_jax.models import MODEL_CONFIGS, family, get_model, num_params


def _count(name: str) -> int:
    model = get_model(name, num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                               train=False))
    return num_params(shapes['params'])


def main() -> None:
    print(f'| {"model":<18} | {"patch":>5} | {"width":>5} | {"depth":>5} | {"heads":>5} | '
          f'{"parameters":>13} |')
    print('|' + '-' * 20 + '|' + '------:|' * 4 + '-' * 14 + ':|')
    for name, config in MODEL_CONFIGS.items():
        if family(config) == 'ViT':
            t, patch = config.transformer, 'x'.join(map(str, config.patches.size))
            print(f'| {name:<18} | {patch:>5} | {config.hidden_size:>5} | {t.num_layers:>5} | '
                  f'{t.num_heads:>5} | {_count(name):>13,} |')
    print()
    print(f'| {"model":<18} | {"patch":>5} | {"width":>5} | {"depth":>5} | {"token MLP":>9} | '
          f'{"channel MLP":>11} | {"parameters":>13} |')
    print('|' + '-' * 20 + '|' + '------:|' * 3 + '----------:|' + '------------:|' + '-' * 14 + ':|')
    for name, config in MODEL_CONFIGS.items():
        if family(config) == 'Mixer':
            patch = 'x'.join(map(str, config.patches.size))
            print(f'| {name:<18} | {patch:>5} | {config.hidden_dim:>5} | {config.num_blocks:>5} | '
                  f'{config.tokens_mlp_dim:>9} | {config.channels_mlp_dim:>11} | {_count(name):>13,} |')
    print('\n(LiT models are listed in MODEL_CONFIGS but not built yet.)')


if __name__ == '__main__':
    main()
