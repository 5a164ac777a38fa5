"""Training input-pipeline throughput on a folder of JPEGs (images/s, and per CPU core).

Writes `--images` synthetic ~500x375 JPEGs (smooth random colour fields plus fine noise, so
they compress like photos) into a temporary class-folder tree, then times
`vit_jax.input_pipeline.get_datasets` on it: JPEG decode, inception (random-resized) crop to
`--crop`, horizontal flip, normalisation and batching, i.e. exactly what training runs. Optional
rows add RandAugment(2, 15) and Mixup, and time the eval pipeline (decode + resize).

    python bench/input_pipeline.py            # prints a table, writes bench/results/input_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def write_jpegs(root: str, count: int, classes: int = 4, size: tuple[int, int] = (500, 375)) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f'class_{i % classes}')
        os.makedirs(folder, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        coarse = coarse.resize(size, Image.BILINEAR)
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f'{i:05d}.jpg'), quality=90)


def time_iterator(it, batches: int, warmup: int) -> tuple[float, float]:
    """(images/s, seconds) over `batches` batches after `warmup` batches."""
    for _ in range(warmup):
        batch = next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch = next(it)
        n += len(batch['image'])
    seconds = time.perf_counter() - start
    return n / seconds, seconds


def model_train_rows(results_dir: str) -> list[dict]:
    """Training throughput rows of bench/throughput.py measured on this machine, if any, to compare."""
    path = os.path.join(results_dir, 'throughput.json')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    return [dict(model=r.get('model'), dtype=r.get('dtype'), batch=r.get('batch'),
                 images_per_s=r.get('img/s')) for r in data.get('rows', []) if r.get('mode') == 'train']


def _cycle(dataset):
    while True:
        yield from dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=512, help='JPEGs to generate')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--batches', type=int, default=24, help='timed batches per row')
    parser.add_argument('--crop', type=int, default=224)
    parser.add_argument('--quick', action='store_true', help='only the plain training pipeline row')
    parser.add_argument('--out', default=os.path.join(RESULTS, 'input_pipeline.json'))
    args = parser.parse_args(argv)

    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    from ml_collections import ConfigDict

    from vit_jax import input_pipeline as ip

    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        write_jpegs(root, args.images)
        print(f'wrote {args.images} JPEGs of 500x375 in {time.perf_counter() - t:.1f} s', file=sys.stderr)
        variants = [('train: decode + inception crop + flip', {})]
        if not args.quick:
            variants += [
                ('train: + RandAugment(2, 15) + Mixup 0.5', dict(aug=dict(
                    randaugment_layers=2, randaugment_magnitude=15, mixup_alpha=0.5))),
                ('eval: decode + resize', 'eval')]
        for name, extra in variants:
            cfg = ConfigDict(dict(dataset=root, batch=args.batch, batch_eval=args.batch, seed=0, prefetch=2,
                                  pp=dict(crop=args.crop)))
            if isinstance(extra, dict):
                cfg.update(extra)
            t = time.perf_counter()
            train, evals, _ = ip.get_datasets(cfg)
            setup = time.perf_counter() - t
            it = _cycle(evals) if extra == 'eval' else train
            rate, seconds = time_iterator(it, args.batches, warmup=3)
            rows.append(dict(pipeline=name, images_per_s=round(rate, 1),
                             images_per_s_per_core=round(rate / cores, 1), timed_batches=args.batches,
                             seconds=round(seconds, 2), setup_s=round(setup, 2)))
    result = dict(
        benchmark='input_pipeline', batch=args.batch, crop=args.crop, source_images=args.images,
        source_size='500x375 JPEG q90', cpu_cores=cores, machine=platform.processor() or platform.machine(),
        note='CPU cores shared with other jobs while measured; numbers are a lower bound', rows=rows)
    print(f'\nInput pipeline, batch {args.batch}, crop {args.crop}, {cores} CPU cores')
    print(f'{"pipeline":45s} {"images/s":>10s} {"per core":>10s}')
    for r in rows:
        print(f'{r["pipeline"]:45s} {r["images_per_s"]:10.1f} {r["images_per_s_per_core"]:10.1f}')
    models = model_train_rows(RESULTS)
    if models:
        result['model_train_throughput'] = dict(source='throughput.json', rows=models)
        print('\nModel training throughput on this machine (bench/results/throughput.json), to compare:')
        for m in models:
            print(f'{m["model"]} {m["dtype"]} batch {m["batch"]}: {m["images_per_s"]:.1f} images/s')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
