"""Prints every named ViT, Mixer and LiT config with its parameter count (1000 classes, 224 px).

    python -m vit_jax.models            # the tables in the README come from this
"""

import jax
import jax.numpy as jnp

from vit_jax.models import MODEL_CONFIGS, family, get_model, num_params


def _count(name: str) -> int:
    if family(MODEL_CONFIGS[name]) == 'LiT':
        model = get_model(name)
        tokens = jnp.zeros((1, model.pp.max_len), jnp.int32)
        init = lambda: model.init(jax.random.PRNGKey(0), images=jnp.zeros((1, 224, 224, 3)),  # noqa: E731
                                  tokens=tokens)
    else:
        model = get_model(name, num_classes=1000)
        init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)  # noqa: E731
    return num_params(jax.eval_shape(init)['params'])


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
    print()
    print(f'| {"model":<18} | {"image tower":>11} | {"text tower":>16} | {"tokenizer":>13} | '
          f'{"out_dim":>11} | {"parameters":>13} |')
    print('|' + '-' * 20 + '|' + '------------:|' + '-----------------:|' + '--------------:|'
          + '------------:|' + '-' * 14 + ':|')
    for name, config in MODEL_CONFIGS.items():
        if family(config) == 'LiT':
            text = (f'BERT-{config.text.config}' if config.text_model == 'bert'
                    else f'{config.text.width}w x {config.text.num_layers}')
            out_dim = '/'.join(str(d) for d in config.out_dim)
            print(f'| {name:<18} | {config.image.model_name:>11} | {text:>16} | '
                  f'{config.pp.tokenizer_name:>13} | {out_dim:>11} | {_count(name):>13,} |')


if __name__ == '__main__':
    main()
