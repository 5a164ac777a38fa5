"""Prints the README's table of checkpoint families: the largest relative logit error of each, loaded
by vit_jax, against the reference forward of tests/test_convert.py (timm-style PyTorch code; NumPy for
big_vision's MAP head), and after exporting it back to timm. Tiny random models in each family's
exact layout.

    .venv/bin/python scripts/family_errors.py      # needs the torch extra
"""

import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tests.test_convert as tc  # noqa: E402  (the reference forward and the family variants)

FAMILIES = {   # test label -> (family, timm examples)
    'timm plain.safetensors': ('class token, token pooling', 'vit_base_patch16_224 (augreg, orig)'),
    'timm gap': ('no class token, average pooling', 'vit_base_patch16_gap_224, vit_giant_patch16_gap_224'),
    'timm cls + avg': ('class token, average pooling', "global_pool='avg'"),
    'timm no_qkv_bias': ('qkv_bias=False', 'vit_base_patch16_224_miil'),
    'timm no_embed_class': ('no_embed_class=True', 'flexivit_*'),
    'timm deit3': ('layer scale + no_embed_class', 'deit3_*'),
    'timm dinov2_reg4': ('registers + layer scale', 'vit_*_reg4_dinov2'),
    'timm reg4_gap': ('registers, average pooling, fc_norm=False', '-'),
    'timm reg4_gap_fc_norm': ('registers, average pooling, fc_norm', 'vit_base_patch16_reg4_gap_256'),
    'timm mae_cls_avg_fc_norm': ('class token, average pooling, fc_norm', 'MAE-style fine-tunes'),
    'big_vision npz': ('big_vision .npz, class token', "pool_type='tok'"),
    'big_vision MAP head': ('big_vision .npz, attention pooling (MAPHead_0)', "pool_type='map'"),
}


def main() -> None:
    errors = {}
    reference_error = tc._rel_err

    def record(got, want, label):
        errors[label] = reference_error(got, want, label)
        return errors[label]

    tc._rel_err = record
    exact = tc.exact_model()
    for test in (tc.test_timm_safetensors_matches_timm_forward_and_round_trips,
                 tc.test_timm_average_pooling_and_architecture_names,
                 tc.test_timm_qkv_bias_false_no_embed_class_and_layer_scale, tc.test_big_vision_detected):
        with tempfile.TemporaryDirectory() as d:
            test(exact, pathlib.Path(d))
    with tempfile.TemporaryDirectory() as d:
        tc.test_big_vision_map_head(pathlib.Path(d))
    print('| family | e.g. | loaded: max rel. error | exported back to timm: max rel. error |')
    print('|---|---|---:|---:|')
    for label, (family, example) in FAMILIES.items():
        back = errors.get(f'{label.removeprefix("timm ")} re-exported')
        if back is not None:
            back = f'{back:.1e}'
        else:
            back = 'same tensors' if label == 'timm plain.safetensors' else '-'
        print(f'| {family} | {example} | {errors[label]:.1e} | {back} |')


if __name__ == '__main__':
    main()
