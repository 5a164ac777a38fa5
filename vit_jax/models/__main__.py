"""Prints every named model config with its parameter count (1000 classes, 224 px).

    python -m vit_jax.models            # the table in the README comes from this
"""

import jax
import jax.numpy as jnp

from vit_jax.models import MODEL_CONFIGS, get_model, num_params


def main() -> None:
    print(f'| {"model":<14} | {"patch":>5} | {"width":>5} | {"depth":>5} | {"heads":>5} | '
          f'{"parameters":>13} |')
    print('|' + '-' * 16 + '|' + '------:|' * 4 + '-' * 14 + ':|')
    for name, config in MODEL_CONFIGS.items():
        model = get_model(name, num_classes=1000)
        shapes = jax.eval_shape(lambda m=model: m.init(
            jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
        t = config.transformer
        patch = 'x'.join(map(str, config.patches.size))
        print(f'| {name:<14} | {patch:>5} | {config.hidden_size:>5} | {t.num_layers:>5} | '
              f'{t.num_heads:>5} | {num_params(shapes["params"]):>13,} |')


if __name__ == '__main__':
    main()
