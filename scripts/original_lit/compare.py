"""Reads what run_original.py wrote with vit_jax's loader, runs vit_jax.models.LitModel and prints the
largest differences from the original's embeddings and temperature."""

import sys

import numpy as np

from vit_jax.checkpoint import loader
from vit_jax.checkpoint.facts import Facts
from vit_jax.models import build_model

# BERT towers record neither heads nor token length (BERT-base: 12 heads; the test used 16 tokens).
FACTS = {'text_transformer': Facts(), 'bert_base': Facts(text_heads=12, max_len=16)}


def main(out_dir: str) -> None:
    for name, facts in FACTS.items():
        found = loader.read(f'{out_dir}/{name}.npz', facts)
        ref = np.load(f'{out_dir}/{name}_out.npz')
        zimg, ztxt, out = build_model(found.model_config, None).apply(
            {'params': found.params}, images=ref['images'], tokens=ref['tokens'])
        print(f'vit_jax {name}: max abs difference zimg {np.abs(zimg - ref["zimg"]).max():.2e}, '
              f'ztxt {np.abs(ztxt - ref["ztxt"]).max():.2e}, t {np.abs(out["t"] - ref["t"]).max():.2e}')


if __name__ == '__main__':
    main(sys.argv[1])
