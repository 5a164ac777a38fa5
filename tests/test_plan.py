"""vit-plan: vit-train's step compiled by libtpu for a TPU slice on this CPU machine.

The report must be the compiled program's own figures (memory_analysis, cost_analysis, the
collectives of its HLO); a program that does not fit is one line and exit code 1; a bad slice
name is one line and exit code 2. Needs libtpu (scripts/setup_env.sh installs it with the test
extras); without it these tests are skipped, saying why.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from vit_jax import main, plan, sharding
from vit_jax.errors import ConfigError
from vit_jax.models import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, 'configs', 'digits.py')
# The digits ViT shrunk to two blocks, split over 2 x 2 v5e chips with fsdp=2 (so that the program
# has all-gathers as well as the gradient all-reduce).
TINY = [f'--config={DIGITS}', '--config.batch=64', '--config.batch_eval=64', '--config.accum_steps=1',
        '--config.model.transformer.num_layers=2', '--config.mesh.fsdp=2', '--config.mesh.fsdp_min_size=1024']

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='libtpu is not installed (setup_env.sh installs it with `test`)')


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, '-m', 'vit_jax.plan', *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_collectives_counts_each_channel_once_and_the_results_of_async_starts():
    hlo = '\n'.join([
        '%fused_computation.1 (param_0: bf16[16,64]) -> bf16[64,64] {',
        '  %all-gather.1 = bf16[64,64]{1,0:T(8,128)} all-gather(%param_0), channel_id=7, dimensions={0}',
        '  %all-gather.2 = bf16[64,64]{1,0:T(8,128)S(1)} all-gather(%param_0), channel_id=7, dimensions={0}',
        '}',
        'ENTRY %main {',
        '  %ags = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%p), channel_id=9, dimensions={0}',
        '  %ar = (f32[10]{0}, bf16[3,4]{1,0}) all-reduce(%a, %b), channel_id=3, to_apply=%add',
        '  ROOT %rs = f32[2,8]{1,0} reduce-scatter(%x), channel_id=4, dimensions={0}',
        '}',
        # libtpu's reduce-scatter: an all-reduce in a fusion that keeps this device's slice
        '%all-reduce-scatter.10 (input_0: f32[64,128], input_1: f32[16]) -> (f32[64,32], f32[4]) {',
        '  %all-reduce.80 = (f32[64,128]{0,1:T(8,128)}, f32[16]{0}) all-reduce(%input_0, %input_1), '
        'channel_id=5, to_apply=%add',
        '  ROOT %tuple.30 = (f32[64,32]{0,1:T(8,128)S(1)}, f32[4]{0}) tuple(%dynamic-slice.75, %ds)',
        '}'])
    found = plan.collectives(hlo)
    assert found['all-gather'] == dict(count=2, bytes=64 * 64 * 2 + 16 * 8 * 4)
    assert found['all-reduce'] == dict(count=1, bytes=10 * 4 + 12 * 2)
    assert found['reduce-scatter'] == dict(count=2, bytes=2 * 8 * 4 + (64 * 32 + 4) * 4)
    assert found['all-to-all']['count'] == 0


def test_model_flops_of_vit_b16_match_the_published_count():
    """ViT-B/16 at 224 px: 17.6 G multiply-adds per image forward (timm's table), 2 FLOPs each."""
    flops = plan.model_flops_per_image(get_config('ViT-B_16'), 224, 1000)
    assert 34.8e9 < flops < 35.4e9


@needs_libtpu
def test_plan_reports_the_compiled_programs_own_figures():
    config, _ = main.parse(['vit-plan', *TINY], require_workdir=False)
    p = plan.compile_plan(config, 'v5e:2x2', num_classes=10)
    compiled = p.compiled
    mem, cost, text = compiled.memory_analysis(), compiled.cost_analysis(), compiled.as_text()
    assert (p.num_devices, p.num_processes, p.mesh) == (4, 1, {'data': 2, 'fsdp': 2})
    assert p.memory == dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                            aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
                            code=mem.generated_code_size_in_bytes)
    assert p.memory['aliased'] > 0   # the state is donated, as vit-train's step donates it
    assert p.compiler_flops == cost['flops'] and p.bytes_accessed == cost['bytes accessed']
    # No loop (accum_steps 1, no scan): the compiler counts every matmul; the analytic count is the matmuls'.
    assert not p.has_loops
    assert 0.85 < p.model_flops / p.compiler_flops <= 1.0
    # fsdp=2: the kernels gathered, their gradients reduce-scattered (libtpu: an all-reduce-scatter
    # fusion); the replicated rest all-reduced
    assert p.collectives['all-gather']['count'] > 0 and p.collectives['all-reduce']['count'] > 0
    assert p.collectives['reduce-scatter']['count'] > 0 and '%all-reduce-scatter' in text
    for op, found in p.collectives.items():
        written = f' {op}(' in text or f' {op}-start(' in text or f'%all-{op}' in text
        assert (found['count'] > 0) == written, op
    assert p.chip.name == 'v5e' and p.hbm_total < p.chip.hbm_bytes


@needs_libtpu
def test_cli_prints_the_plan_and_exits_0():
    proc = _cli(*TINY, '--topology=v5e:2x2')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert '4 chips, 1 processes' in out and "mesh {'data': 2, 'fsdp': 2}" in out
    for needle in ('HBM per chip: arguments', 'of 16.00 GiB', 'FLOPs per chip per step: compiler',
                   'Collectives: all-gather', 'all-reduce', 'Roofline: step >=', 'MFU <='):
        assert needle in out, (needle, out)
    # libtpu's start-up warnings about a missing TPU VM environment stay away from the user.
    assert 'TPU_ACCELERATOR_TYPE' not in proc.stderr and 'TPU_WORKER_HOSTNAMES' not in proc.stderr


@needs_libtpu
def test_a_program_that_does_not_fit_is_one_line_and_exit_1():
    proc = _cli(f'--config={DIGITS}', '--config.batch=262144', '--config.batch_eval=64',
                '--config.accum_steps=1', '--topology=v5e:2x2')
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith('vit-plan: does not fit: RESOURCE_EXHAUSTED'), proc.stdout
    assert 'exceeds available HBM' in proc.stdout and len(proc.stdout.splitlines()) == 1
    assert 'Traceback' not in proc.stderr


@needs_libtpu
def test_a_bad_topology_is_one_line_and_exit_2():
    proc = _cli(f'--config={DIGITS}', '--topology=v9z:2x2')
    assert proc.returncode == 2
    assert proc.stderr.startswith('vit-plan: error: --topology=v9z:2x2:')
    assert len(proc.stderr.splitlines()) == 1


@needs_libtpu
def test_v4_meshes_take_one_device_per_chip():
    """libtpu lists both cores of a v4 chip; jax.make_mesh wants one per chip ("megacore")."""
    devices = plan.topology_devices('v4:2x2x2')
    assert len(devices) == 16
    mesh = sharding.create_mesh(-1, 2, devices=devices)
    assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
    assert {d.core_on_chip for d in mesh.devices.flat} == {0}
    assert len({tuple(d.coords) for d in mesh.devices.flat}) == 8


@needs_libtpu
@pytest.mark.slow
def test_search_prints_settings_that_fit_best_first_as_vit_train_flags():
    proc = _cli(*TINY, '--topology=v5e:2x2', '--search')
    assert proc.returncode == 0, proc.stderr
    found = proc.stdout.split('Settings that fit, best first (vit-train overrides):\n')[1].splitlines()
    assert len(found) == 4   # remat off / on x fsdp 1 / 4: the tiny model fits without micro-batches
    bounds = [float(line.split('step >= ')[1].split(' ms')[0]) for line in found]
    assert bounds == sorted(bounds)
    for line in found:   # each line is flags that vit-train takes as they are
        flags = line.split('#')[0].split()
        config, _ = main.parse(['vit-train', *TINY, *flags], require_workdir=False)
        assert config.model.scan_layers and config.accum_steps == 1


@needs_libtpu
def test_list_topologies_names_the_slices_libtpu_accepts_one_device_per_chip():
    proc = _cli('--list-topologies')
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:5] for line in proc.stdout.splitlines()}
    assert rows['v5e:4x4'] == ['16', 'chips', '4', 'processes']
    assert rows['v4:2x2x2'] == ['8', 'chips', '2', 'processes']   # 16 cores, 8 chips
    assert rows['v5p:8x8x8'][0] == '512' and 'v6e:16x16' in rows


def test_a_plan_above_the_chips_hbm_does_not_fit_even_when_the_compiler_accepted_it():
    """ViT-L/16 at 256 images per v5e chip compiled with 16.4 GiB of temporaries (16 GiB chips)."""
    memory = dict(arguments=4098353152, outputs=3921842176, aliased=3921840128, temporaries=17591025152,
                  code=34240000)
    p = plan.Plan(topology='v5e:4x4', chip=plan.CHIPS['TPU v5 lite'], num_devices=16, num_processes=4,
                  mesh={'data': 16, 'fsdp': 1}, memory=memory, compiler_flops=1e12, bytes_accessed=1e10,
                  model_flops=None, collectives={}, has_loops=True, compile_s=1.0)
    assert not p.fits and p.hbm_total == 4098353152 + 17591025152 + 2048 + 34240000
    assert p.does_not_fit_line().startswith('20.23 GiB per chip') and 'of a v5e chip' in p.does_not_fit_line()
    assert plan.Plan(**{**p.__dict__, 'memory': dict(memory, temporaries=2 ** 30)}).fits


# --- NVIDIA GPUs: XLA's GPU compiler through JAX's CUDA plugin, without a GPU --------------------

# setup_env.sh installs the plugin with the test extras into a folder of its own: in .venv itself
# every JAX program here would look for a GPU. Only these tests put it on the path.
CUDA_PLUGIN = os.path.join(ROOT, '.venv', 'jax-cuda-plugin')
needs_cuda_plugin = pytest.mark.skipif(
    not os.path.isdir(os.path.join(CUDA_PLUGIN, 'jax_plugins')),
    reason='JAX\'s CUDA plugin is not in .venv/jax-cuda-plugin (setup_env.sh installs it with `test`)')


def _gpu_env(**extra):
    return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([ROOT, CUDA_PLUGIN]), **extra)


# The report's figures against the compiled program's own, in a process with the plugin on its path.
_GPU_PLAN = '''
import json, sys
from vit_jax import main, plan
config, _ = main.parse(['vit-plan', *sys.argv[1:]], require_workdir=False)
p = plan.compile_plan(config, 'h100:2x2', num_classes=10)
mem, text = p.compiled.memory_analysis(), p.compiled.as_text()
print(json.dumps(dict(
    devices=p.num_devices, processes=p.num_processes, mesh=p.mesh, chip=p.chip.name, fits=p.fits,
    memory_matches=p.memory == dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                                    aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
                                    code=mem.generated_code_size_in_bytes),
    aliased=p.memory['aliased'], cost=p.compiled.cost_analysis(), cost_known=p.cost_known,
    collectives=p.collectives, in_text={op: f' {op}(' in text or f' {op}-start(' in text
                                        for op in plan.COLLECTIVES},
    gpu_kind=str(plan.topology_devices('h100:2x2')[0].device_kind))))
'''


@needs_cuda_plugin
@pytest.mark.slow
def test_plan_for_gpus_reports_the_compiled_programs_own_figures():
    proc = subprocess.run([sys.executable, '-c', _GPU_PLAN, *TINY], capture_output=True, text=True,
                          env=_gpu_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''   # no "cuda drivers" banners from the plugin, no XLA warnings
    found = __import__('json').loads(proc.stdout)
    assert (found['devices'], found['processes'], found['mesh']) == (4, 2, {'data': 2, 'fsdp': 2})
    assert found['chip'] == 'H100 SXM' and found['gpu_kind'] == 'NVIDIA H100 80GB HBM3'
    assert found['memory_matches'] and found['aliased'] > 0 and found['fits']
    # XLA's GPU compiler gives no cost analysis: the report says so instead of printing zeros.
    assert found['cost'] is None and not found['cost_known']
    assert found['collectives']['all-gather']['count'] > 0   # fsdp=2 gathers the kernels
    for op, count in found['collectives'].items():
        assert (count['count'] > 0) == found['in_text'][op], op


@needs_cuda_plugin
@pytest.mark.slow
def test_cli_plans_for_gpus_and_a_program_above_the_allocators_share_does_not_fit():
    proc = subprocess.run([sys.executable, '-m', 'vit_jax.plan', *TINY, '--topology=a100:2'],
                          capture_output=True, text=True, env=_gpu_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr
    out = proc.stdout
    for needle in ('on a100:2 (A100 SXM): 2 chips, 1 processes',
                   'of 59.44 GiB (75% of 79.26 GiB: XLA_PYTHON_CLIENT_MEM_FRACTION)',
                   "compiler: none (XLA's GPU compiler gives no cost analysis)",
                   'at 312 TFLOP/s bf16; HBM traffic unknown: compute only'):
        assert needle in out, (needle, out)
    # JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION of the card: the fit is judged against that.
    tight = _gpu_env(XLA_PYTHON_CLIENT_MEM_FRACTION='0.00001')
    proc = subprocess.run([sys.executable, '-m', 'vit_jax.plan', *TINY, '--topology=a100:2'],
                          capture_output=True, text=True, env=tight, cwd=ROOT, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith('vit-plan: does not fit: ')
    assert 'exceeds the 0.00 GiB (0% of 79.26 GiB' in proc.stdout


@pytest.mark.parametrize('name', ['h100:0', 'h100:8x', 'a100:2x2x2', 'h100:'])
def test_a_bad_gpu_set_is_one_line_naming_the_forms(name):
    with pytest.raises(ConfigError, match=rf'--topology={name}: expected .*:GPUS or .*:HOSTSxGPUS'):
        plan.topology_devices(name)


def test_gpu_target_configs_carry_the_cards_figures():
    """What XLA compiles for is the card of the table: its memory, bandwidth and name."""
    for name, card in plan.GPUS.items():
        text = card.target_config()
        assert f'device_memory_size: {int(card.chip.hbm_bytes)}' in text, name
        assert f'memory_bandwidth: {int(card.chip.hbm_bytes_per_s)}' in text, name
        assert f'device_description_str: "{card.device_kind}"' in text, name
        assert plan.CHIPS[card.device_kind] is card.chip and card.chip.gpu
