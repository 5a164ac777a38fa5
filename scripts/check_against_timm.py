"""By-hand check against the real timm (not a test dependency): tiny random timm ViTs of each family
loaded by vit_jax from what `timm.models.save_for_hf` writes, and vit_jax's timm export loaded back
with `timm.create_model(architecture, **model_args).load_state_dict(sd, strict=True)`.

Needs timm importable (docs/DESIGN.md, "Foreign formats", says how to get timm 1.0.31 next to torch here):

    PYTHONPATH=/path/to/timm_site:. JAX_PLATFORMS=cpu .venv/bin/python scripts/check_against_timm.py

Prints one line per family: the max relative logit error of the load and of the export's timm forward.
"""

import json
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from timm.models import save_for_hf  # noqa: E402

from vit_jax import convert  # noqa: E402
from vit_jax.checkpoint import loader  # noqa: E402
from vit_jax.models import VisionTransformer  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
CASES = [   # (timm architecture, model_args beyond TINY)
    ('vit_base_patch16_224', {}), ('vit_base_patch16_224', {'global_pool': 'avg'}),
    ('vit_base_patch16_224_miil', {}), ('flexivit_small', {}), ('deit3_small_patch16_224', {}),
    ('vit_small_patch14_reg4_dinov2', {}), ('vit_medium_patch16_reg4_gap_256', {}),
    ('vit_base_patch16_siglip_224', {}), ('vit_base_patch32_siglip_256', {}),
    ('deit_tiny_distilled_patch16_224', {}), ('vit_base_patch16_gap_224', {}),
    ('vit_small_patch14_reg4_dinov2', {'dynamic_img_size': True}),   # the same numerics at img_size
]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def main() -> None:
    warnings.simplefilter('ignore')
    torch.manual_seed(0)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    print(f'timm {timm.__version__}')
    for name, extra in CASES:
        args = {**TINY, **extra}
        model = timm.create_model(name, pretrained=False, num_classes=5, **args).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            want = model(nchw).numpy()
        with tempfile.TemporaryDirectory() as d:
            save_for_hf(model, d, model_args=args)
            found = loader.read(d)
            ours = VisionTransformer(num_classes=5, **found.model_config)
            got = np.asarray(ours.apply({'params': found.params}, images, train=False))
            out = convert.export(found.params, found.model_config, os.path.join(d, 'back'), format='timm')
            with open(os.path.join(out, 'config.json')) as f:
                record = json.load(f)
            back = timm.create_model(record['architecture'], pretrained=False, **record['model_args']).eval()
            back.load_state_dict(load_file(os.path.join(out, 'model.safetensors')), strict=True)
            with torch.no_grad():
                again = back(nchw).numpy()
        print(f'{name:34s} {json.dumps(extra):24s} load {_rel(got, want):.1e}   export -> '
              f'{record["architecture"]} (strict) {_rel(again, want):.1e}')


if __name__ == '__main__':
    main()
