"""The timm architecture table, as data: the registered VisionTransformer architectures vit_jax loads
exactly, with their defaults (read by `vit_jax.checkpoint.timm`; `scripts/check_timm_archs.py`
compares it with timm's source)."""

# timm's VisionTransformer architectures that vit_jax.models.VisionTransformer expresses exactly:
# name -> (width, depth, heads, patch, pooling, activation: 'gelu' exact or 'gelu_tanh'), read from the
# `model_args` of the @register_model functions in timm 1.0.29's models/vision_transformer.py and
# models/deit.py (`python scripts/check_timm_archs.py VISION_TRANSFORMER_PY DEIT_PY` compares them):
# every `vit_*` whose arguments are only size, heads and patch (class token + token pooling), or no
# class token with average pooling and no fc_norm (our classifier='gap'); and those that load exactly
# into the same tree: qkv_bias=False (vit_base_patch16_224_miil: zero q/k/v biases), no_embed_class=True
# (flexivit_*: a zero class-token slot in the position embedding), layer scale (init_values: the plus,
# 36x1, medium/betwixt gap and DINOv2 ViTs, DeiT-3, which also has no_embed_class), register tokens
# (reg_tokens: DINOv2-reg4, the reg*_gap ViTs), fc_norm (timm's default for average pooling; read from
# the weights), attention pooling (global_pool='map': timm's AttentionPoolLatent is big_vision's
# MAPHead; the SigLIP image towers, some with act_layer='gelu_tanh') and DeiT (the distilled ones with
# their distillation token and second head). The MLP ratio only sets the MLP width, which the weights
# hold. Any other argument (pre_norm, another MLP layer, qk_norm, rotary embeddings, ...) changes the
# computation: not listed.
TIMM_ARCHS = {
    'vit_tiny_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),
    'vit_tiny_patch16_384': (192, 12, 3, 16, 'token', 'gelu'),
    'vit_small_patch32_224': (384, 12, 6, 32, 'token', 'gelu'),
    'vit_small_patch32_384': (384, 12, 6, 32, 'token', 'gelu'),
    'vit_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'vit_small_patch16_384': (384, 12, 6, 16, 'token', 'gelu'),
    'vit_small_patch8_224': (384, 12, 6, 8, 'token', 'gelu'),
    'vit_base_patch32_224': (768, 12, 12, 32, 'token', 'gelu'),
    'vit_base_patch32_384': (768, 12, 12, 32, 'token', 'gelu'),
    'vit_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'vit_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'vit_base_patch8_224': (768, 12, 12, 8, 'token', 'gelu'),
    'vit_large_patch32_224': (1024, 24, 16, 32, 'token', 'gelu'),
    'vit_large_patch32_384': (1024, 24, 16, 32, 'token', 'gelu'),
    'vit_large_patch16_224': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_large_patch16_384': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_large_patch14_224': (1024, 24, 16, 14, 'token', 'gelu'),
    'vit_huge_patch14_224': (1280, 32, 16, 14, 'token', 'gelu'),
    'vit_base_patch16_gap_224': (768, 12, 16, 16, 'avg', 'gelu'),
    'vit_huge_patch14_gap_224': (1280, 32, 16, 14, 'avg', 'gelu'),
    'vit_huge_patch16_gap_448': (1280, 32, 16, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_224': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_256': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_384': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_512': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_large_patch16_siglip_gap_256': (1024, 24, 16, 16, 'avg', 'gelu'),
    'vit_large_patch16_siglip_gap_384': (1024, 24, 16, 16, 'avg', 'gelu'),
    'vit_base_patch16_224_miil': (768, 12, 12, 16, 'token', 'gelu'),      # qkv_bias=False
    'flexivit_small': (384, 12, 6, 16, 'token', 'gelu'),                  # no_embed_class=True (240 px)
    'flexivit_base': (768, 12, 12, 16, 'token', 'gelu'),
    'flexivit_large': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_base_patch32_plus_256': (896, 12, 14, 32, 'token', 'gelu'),      # layer scale (init_values=1e-5)
    'vit_base_patch16_plus_240': (896, 12, 14, 16, 'token', 'gelu'),
    'vit_small_patch16_36x1_224': (384, 36, 6, 16, 'token', 'gelu'),
    'vit_small_patch14_dinov2': (384, 12, 6, 14, 'token', 'gelu'),
    'vit_base_patch14_dinov2': (768, 12, 12, 14, 'token', 'gelu'),
    'vit_large_patch14_dinov2': (1024, 24, 16, 14, 'token', 'gelu'),
    'deit3_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),         # layer scale + no_embed_class
    'deit3_small_patch16_384': (384, 12, 6, 16, 'token', 'gelu'),
    'deit3_medium_patch16_224': (512, 12, 8, 16, 'token', 'gelu'),
    'deit3_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit3_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'deit3_large_patch16_224': (1024, 24, 16, 16, 'token', 'gelu'),
    'deit3_large_patch16_384': (1024, 24, 16, 16, 'token', 'gelu'),
    'deit3_huge_patch14_224': (1280, 32, 16, 14, 'token', 'gelu'),
    'vit_small_patch14_reg4_dinov2': (384, 12, 6, 14, 'token', 'gelu'),   # + 4 registers, no_embed_class
    'vit_base_patch14_reg4_dinov2': (768, 12, 12, 14, 'token', 'gelu'),
    'vit_large_patch14_reg4_dinov2': (1024, 24, 16, 14, 'token', 'gelu'),
    'vit_medium_patch16_gap_240': (512, 12, 8, 16, 'avg', 'gelu'),        # qkv_bias=False + layer scale
    'vit_medium_patch16_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_medium_patch16_gap_384': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_giant_patch16_gap_224': (1408, 40, 16, 16, 'avg', 'gelu'),  # mlp_ratio 48/11 (the MLP width is read)
    'vit_base_patch16_reg4_gap_256': (768, 12, 12, 16, 'avg', 'gelu'),  # registers + fc_norm (timm's default)
    'vit_little_patch16_reg4_gap_256': (320, 14, 5, 16, 'avg', 'gelu'),   # ... + layer scale
    'vit_medium_patch16_reg1_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_medium_patch16_reg4_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_mediumd_patch16_reg4_gap_256': (512, 20, 8, 16, 'avg', 'gelu'),
    'vit_mediumd_patch16_reg4_gap_384': (512, 20, 8, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg1_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg4_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg4_gap_384': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_224': (768, 12, 12, 16, 'map', 'gelu'),  # SigLIP image towers
    'vit_base_patch16_siglip_256': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch16_siglip_384': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch16_siglip_512': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch32_siglip_256': (768, 12, 12, 32, 'map', 'gelu_tanh'),
    'vit_large_patch16_siglip_256': (1024, 24, 16, 16, 'map', 'gelu'),
    'vit_large_patch16_siglip_384': (1024, 24, 16, 16, 'map', 'gelu'),
    'vit_large_patch16_siglip_512': (1024, 24, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch14_siglip_224': (1152, 27, 16, 14, 'map', 'gelu'),  # mlp_ratio 3.7362
    'vit_so400m_patch14_siglip_378': (1152, 27, 16, 14, 'map', 'gelu'),
    'vit_so400m_patch14_siglip_384': (1152, 27, 16, 14, 'map', 'gelu'),
    'vit_so400m_patch16_siglip_256': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_384': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_512': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_256': (1536, 40, 16, 16, 'map', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_384': (1536, 40, 16, 16, 'map', 'gelu_tanh'),
    'vit_base_patch32_siglip_gap_256': (768, 12, 12, 32, 'avg', 'gelu_tanh'),
    'vit_large_patch16_siglip_gap_512': (1024, 24, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch14_siglip_gap_224': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_378': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_384': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_448': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_896': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch16_siglip_gap_256': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_gap_384': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_gap_512': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_gap_256': (1536, 40, 16, 16, 'avg', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_gap_384': (1536, 40, 16, 16, 'avg', 'gelu_tanh'),
    'deit_tiny_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),
    'deit_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'deit_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_tiny_distilled_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),   # + distillation token
    'deit_small_distilled_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'deit_base_distilled_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_base_distilled_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
}
