"""vit_jax: the Vision Transformer in JAX/Flax, faithful to the original code and checkpoints.

    import vit_jax
    model = vit_jax.load('ViT-B_16')        # `vit_jax.api`: a name, file, workdir or bucket path
    model.predict(['cat.jpg'])

`import vit_jax` stays light: `load` and `Model` import the model code when first used.
"""

__version__ = '0.1.0'


def __getattr__(name: str):
    if name in ('load', 'Model'):
        from vit_jax import api
        return getattr(api, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['Model', 'load']
