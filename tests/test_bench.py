"""The benchmark scripts run: their shared pieces, and the child of the XLA flag sweep (which runs
bench.throughput's own model and vit-train step functions) on the smallest ViT, batch 1, 32 px."""

import importlib
import json

import pytest

from bench import _util


@pytest.mark.parametrize('name', ['throughput', 'train_gap', 'memory', 'xla_flags', 'cli_startup',
                                  'plan_table', 'xla_dot_layout'])
def test_every_bench_script_imports(name):
    assert callable(importlib.import_module(f'bench.{name}').main)


def test_paired_rounds_rotate_the_order_and_gemm_rates_report_both_frameworks():
    calls = []
    seconds = _util.paired_rounds({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')},
                                  rounds=2, calls=1)
    assert calls == ['a', 'b', 'a', 'b', 'b', 'a'] and all(len(v) == 2 for v in seconds.values())
    rates = _util.gemm_rates([(16, 8, 4)], 'float32', rounds=1)
    assert set(rates) == {(16, 8, 4)} and set(rates[16, 8, 4]) == {'xla', 'torch'}
    assert all(r > 0 for r in rates[16, 8, 4].values())


@pytest.mark.slow
def test_xla_flag_sweep_child_times_the_forward_and_the_train_step(capsys, monkeypatch):
    from bench import throughput, xla_flags

    monkeypatch.setattr(throughput, 'IMAGE_SIZE', 32)   # small images: the same functions, faster
    xla_flags.child('Ti_16', 1, 'float32', min_time=0.0)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {'inference', 'train'} and all(v > 0 for v in result.values())
