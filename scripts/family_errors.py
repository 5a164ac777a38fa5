"""Prints the README's table of checkpoint families: the largest relative logit error of each, loaded
by vit_jax, against the reference forward of tests/test_convert.py (timm-style PyTorch code,
transformers itself for Hugging Face: tests/test_hf_deit_dinov2.py for DeiT and DINOv2, NumPy for
big_vision's MAP head and sin-cos embedding), and
after exporting it back to its own format. Tiny random models in each family's exact layout.

    .venv/bin/python scripts/family_errors.py      # needs the torch extra
"""

import os
import pathlib
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tests.test_convert as tc  # noqa: E402  (the reference forward and the family variants)
import tests.test_hf_deit_dinov2 as th  # noqa: E402  (Hugging Face DeiT and DINOv2)

SAME = 'same tensors'   # the tests assert a bit-exact re-export
# test label -> (family, e.g., the test label of its re-export or SAME or '-')
FAMILIES = {
    'timm plain.safetensors': ('timm: class token, token pooling', 'vit_base_patch16_224 (augreg)', SAME),
    'timm gap': ('timm: no class token, average pooling', 'vit_base_patch16_gap_224, *_siglip_gap_*', '-'),
    'timm cls + avg': ('timm: class token, average pooling', "global_pool='avg'", '-'),
    'timm no_qkv_bias': ('timm: qkv_bias=False', 'vit_base_patch16_224_miil', 'no_qkv_bias re-exported'),
    'timm no_embed_class': ('timm: no_embed_class=True', 'flexivit_*', 'no_embed_class re-exported'),
    'timm deit3': ('timm: layer scale + no_embed_class', 'deit3_*', 'deit3 re-exported'),
    'timm dinov2_reg4': ('timm: registers + layer scale', 'vit_*_reg4_dinov2', 'dinov2_reg4 re-exported'),
    'timm reg4_gap': ('timm: registers, average pooling, fc_norm=False', '-', 'reg4_gap re-exported'),
    'timm reg4_gap_fc_norm': ('timm: registers, average pooling, fc_norm', 'vit_base_patch16_reg4_gap_256',
                              'reg4_gap_fc_norm re-exported'),
    'timm mae_cls_avg_fc_norm': ('timm: class token, average pooling, fc_norm', 'MAE-style fine-tunes',
                                 'mae_cls_avg_fc_norm re-exported'),
    'timm siglip': ('timm: attention pooling (attn_pool), tanh GELU', 'vit_*_siglip_* (SigLIP image towers)',
                    SAME),
    'timm deit_distilled': ('timm: distillation token + head_dist', 'deit_*_distilled_patch16_*', SAME),
    'big_vision npz': ('big_vision .npz, class token', "pool_type='tok'", '-'),
    'big_vision MAP head': ('big_vision .npz, attention pooling (MAPHead_0)', "pool_type='map'",
                            'big_vision MAP head -> timm attn_pool'),
    'big_vision sin-cos npz': ('big_vision .npz, fixed 2-D sin-cos position embedding', "posemb='sincos2d'",
                               '-'),
    'HF directory -> vit_jax': ('Hugging Face ViTForImageClassification', 'google/vit-base-patch16-224',
                                'vit_jax -> HF export (from_pretrained)'),
    'HF ViTModel pooler': ('Hugging Face ViTModel + pooler (pre_logits)', 'google/vit-base-patch16-224-in21k',
                           'pre_logits -> HF ViTModel pooler'),
    'HF DeiTForImageClassificationWithTeacher': (
        'Hugging Face DeiTForImageClassificationWithTeacher (mean of the two heads)',
        'facebook/deit-base-distilled-patch16-224', 'HF DeiTForImageClassificationWithTeacher exported back'),
    'HF DeiTForImageClassification': ("Hugging Face DeiTForImageClassification (the class token's head)",
                                      'fine-tunes of deit-*-distilled-*',
                                      'HF DeiTForImageClassification exported back'),
    'HF DeiTModel': ('Hugging Face DeiTModel + pooler (pre_logits)', '-', 'HF DeiTModel exported back'),
    'HF Dinov2Model': ('Hugging Face Dinov2Model (pooler_output; layer scale, mlp_ratio, qkv_bias from '
                       'config.json)', 'facebook/dinov2-small', '-'),
    'HF Dinov2ForImageClassification': ('Hugging Face Dinov2ForImageClassification (head on [class token, '
                                        'mean patch token])', 'DINOv2 linear-probe fine-tunes', '-'),
    'HF Dinov2WithRegistersModel': ('Hugging Face Dinov2WithRegistersModel (registers without position '
                                    'embedding)', 'facebook/dinov2-with-registers-small', '-'),
    'HF Dinov2WithRegistersForImageClassification': ('Hugging Face Dinov2WithRegistersForImageClassification',
                                                     '-', '-'),
    'HF SigLIP vision': ('Hugging Face SiglipVisionModel', 'google/siglip-base-patch16-224 (vision)', '-'),
    'HF SigLIP two_tower': ('Hugging Face SiglipModel: its vision tower', 'google/siglip-so400m-patch14-384',
                            '-'),
}


def main() -> None:
    errors = {}
    reference_error = tc._rel_err

    def record(got, want, label):
        errors[label] = reference_error(got, want, label)
        return errors[label]

    tc._rel_err = th._rel_err = record
    exact = tc.exact_model()
    with_exact = (tc.test_timm_safetensors_matches_timm_forward_and_round_trips,
                  tc.test_timm_average_pooling_and_architecture_names,
                  tc.test_timm_qkv_bias_false_no_embed_class_and_layer_scale, tc.test_big_vision_detected)
    alone = (tc.test_big_vision_map_head, tc.test_big_vision_sincos_position_embedding,
             tc.test_hf_directory_matches_transformers, tc.test_hf_export_loads_with_from_pretrained,
             tc.test_hf_vitmodel_pooler_becomes_pre_logits,
             tc.test_hf_export_of_pre_logits_is_a_vitmodel_with_its_pooler, tc.test_hf_siglip_vision_models)
    for test in with_exact + alone:
        with tempfile.TemporaryDirectory() as d:
            test(*((exact,) if test in with_exact else ()), pathlib.Path(d))
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as monkeypatch:
        tc.test_timm_siglip_attention_pooling_and_deit_distillation(exact, pathlib.Path(d), monkeypatch)
    import torch
    import transformers

    deit = ('DeiTForImageClassification', 'DeiTForImageClassificationWithTeacher', 'DeiTModel')
    for test, classes in ((th.test_hf_deit_loads_exactly, deit),
                          (th.test_hf_deit_exports_back_strict_loading, deit),
                          (th.test_hf_dinov2_model_features_load_exactly, (None,)),
                          (th.test_hf_dinov2_for_image_classification_loads_exactly, (None,)),
                          (th.test_hf_dinov2_with_registers_loads_exactly,
                           ('Dinov2WithRegistersModel', 'Dinov2WithRegistersForImageClassification'))):
        for cls in classes:
            with tempfile.TemporaryDirectory() as d:
                test((torch, transformers), pathlib.Path(d), *((cls,) if cls else ()))
    print('| family | e.g. | loaded: max rel. error | exported back: max rel. error |')
    print('|---|---|---:|---:|')
    for label, (family, example, back) in FAMILIES.items():
        if back in errors:
            back = f'{errors[back]:.1e}'
        print(f'| {family} | {example} | {errors[label]:.1e} | {back} |')


if __name__ == '__main__':
    main()
