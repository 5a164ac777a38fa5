"""`vit-plan` / `python -m vit_jax.plan`: vit-train's step compiled for a TPU slice or NVIDIA GPUs,
without a TPU or a GPU.

  vit-plan --config=configs/pretrain.py:ViT-B_16,imagenet21k --topology=v5e:4x4 \\
      --config.model.scan_layers=True
  vit-plan --config=... --topology=h100:2x8      # 2 hosts of 8 H100s
  vit-plan --list-topologies

The same `--config` and `--config.<field>=<value>` overrides as vit-train resolve the same config;
the step vit-train runs (`train.jit_train_step`, its optimizer, mesh and shardings) is compiled by
the real compiler for the devices of `--topology`, from abstract arguments: nothing is allocated.
TPU slices by libtpu's names (v5e:4x4, v4:2x2x2, v5p:4x4x4, v6e:2x2, ...; `pip install
"jax[tpu]==<installed jax>"`); NVIDIA GPUs as CARD:GPUS or CARD:HOSTSxGPUS (h100, h200, a100; XLA's
GPU compiler through JAX's CUDA plugin, `pip install "jax[cuda12]==<installed jax>"`, or without a
GPU the plugin alone, see GPUS). Printed: devices and processes, memory per chip against
what a program may use of it, FLOPs per chip per step, the collectives of the compiled program, and a
roofline lower bound on the step time with the model FLOP utilisation it allows. `--search` compiles
variations (fsdp, accum_steps, remat, scan_layers) and prints those that fit, best first, as vit-train
overrides.

Exit codes: 0 it fits; 1 it does not fit (the compiler's RESOURCE_EXHAUSTED line, or the report
and a per-chip total above the chip's HBM, which the compiler does not always refuse; with --search:
no setting fits); 2 bad input (one line).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Any

import jax
from jax.experimental import topologies

from vit_jax import cli, sharding, tflib, train
from vit_jax import main as main_lib
from vit_jax.errors import ConfigError, TrainingError
from vit_jax.models import build_model
from vit_jax.models.vit import traced_for

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures of a TPU generation or a GPU card."""

    name: str
    hbm_bytes: float
    peak_bf16_flops: float   # FLOP/s, dense bf16 matrix multiplies
    hbm_bytes_per_s: float
    source: str
    gpu: bool = False

    @property
    def usable_bytes(self) -> float:
        """What one program may use: a TPU's whole HBM; on a GPU, the share JAX's allocator takes
        (XLA_PYTHON_CLIENT_MEM_FRACTION: 0.75 unless set)."""
        return self.hbm_bytes * (gpu_memory_fraction() if self.gpu else 1.0)

    def capacity(self) -> str:
        if not self.gpu:
            return _gib(self.hbm_bytes)
        return (f'{_gib(self.usable_bytes)} ({gpu_memory_fraction():.0%} of {_gib(self.hbm_bytes)}: '
                'XLA_PYTHON_CLIENT_MEM_FRACTION)')


def gpu_memory_fraction() -> float:
    """JAX's GPU allocator preallocates this share of the card (XLA_PYTHON_CLIENT_MEM_FRACTION)."""
    value = os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.75')
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise ConfigError(f'XLA_PYTHON_CLIENT_MEM_FRACTION={value!r}: expected a number in (0, 1]')
    return fraction


# Keyed by the `device_kind` that libtpu reports for the generation's devices.
CHIPS = {
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s.
    'TPU v4': Chip('v4', 32 * GiB, 275e12, 1200e9, 'https://cloud.google.com/tpu/docs/v4'),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s.
    'TPU v5 lite': Chip('v5e', 16 * GiB, 197e12, 819e9, 'https://cloud.google.com/tpu/docs/v5e'),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s.
    'TPU v5': Chip('v5p', 95 * GiB, 459e12, 2765e9, 'https://cloud.google.com/tpu/docs/v5p'),
    'TPU v5p': Chip('v5p', 95 * GiB, 459e12, 2765e9, 'https://cloud.google.com/tpu/docs/v5p'),
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM, 1640 GB/s.
    'TPU v6 lite': Chip('v6e', 32 * GiB, 918e12, 1640e9, 'https://cloud.google.com/tpu/docs/v6e'),
}


@dataclasses.dataclass(frozen=True)
class Card:
    """An NVIDIA card as XLA's GPU compiler sees it without one: the fields of its
    `stream_executor.GpuTargetConfigProto` (from XLA's own specs,
    xla/backends/gpu/target_config/specs/*.txtpb, trimmed to the fields this jaxlib parses) and the
    card's published figures (`chip`)."""

    device_kind: str
    chip: Chip
    compute_capability: int   # major version: 8 Ampere, 9 Hopper
    core_count: int            # streaming multiprocessors
    fpus_per_core: int
    shared_memory_per_core: int
    shared_memory_per_block_optin: int
    l2_cache_size: int
    clock_rate_ghz: float

    def target_config(self) -> str:
        return '\n'.join([
            'gpu_device_info {',
            '  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152',
            f'  shared_memory_per_core: {self.shared_memory_per_core} threads_per_core_limit: 2048',
            f'  core_count: {self.core_count} fpus_per_core: {self.fpus_per_core}',
            '  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535',
            f'  memory_bandwidth: {int(self.chip.hbm_bytes_per_s)} l2_cache_size: {self.l2_cache_size}',
            f'  clock_rate_ghz: {self.clock_rate_ghz} device_memory_size: {int(self.chip.hbm_bytes)}',
            f'  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}',
            f'  cuda_compute_capability {{ major: {self.compute_capability} }}',
            '  registers_per_core_limit: 65536 registers_per_block_limit: 65536',
            '}',
            'platform_name: "CUDA"',
            # the CUDA runtime and cuDNN that jax[cuda12]==0.10.2 installs (12.9.79, 9.28.0)
            'runtime_version { major: 12 minor: 9 }',
            'dnn_version_info { major: 9 minor: 28 }',
            f'device_description_str: "{self.device_kind}"'])


# `--topology=h100:8` (one host of 8) or `h100:2x8` (2 hosts of 8). Compiling needs JAX's CUDA
# plugin, not a GPU: `pip install "jax[cuda12]==<jax>"`; on a machine without a GPU, where the full
# install would make every JAX program look for one, put just its two wheels in a folder of their own
# for vit-plan: `pip install --no-deps --target DIR jax-cuda12-plugin==<jax> jax-cuda12-pjrt==<jax>
# nvidia-cuda-runtime-cu12` (without the CUDA runtime the plugin prints that it found no driver) and
# run `PYTHONPATH=DIR vit-plan ...`. Published figures: bf16 dense tensor-core FLOP/s (the
# datasheets print twice that "with sparsity"), memory (bytes as XLA's specs give the card's) and
# its bandwidth.
GPUS = {
    # https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM): 989 TFLOP/s bf16, 80 GB, 3.35 TB/s.
    'h100': Card('NVIDIA H100 80GB HBM3', Chip('H100 SXM', 84_942_979_072, 989e12, 3.35232e12,
                                               'https://www.nvidia.com/en-us/data-center/h100/', gpu=True),
                 9, 132, 128, 233_472, 232_448, 52_428_800, 1.98),
    # https://www.nvidia.com/en-us/data-center/h200/: 989 TFLOP/s bf16, 141 GB, 4.8 TB/s.
    'h200': Card('NVIDIA H200', Chip('H200 SXM', 151_397_597_184, 989e12, 4.8e12,
                                     'https://www.nvidia.com/en-us/data-center/h200/', gpu=True),
                 9, 132, 128, 233_472, 232_448, 52_428_800, 1.98),
    # https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM): 312 TFLOP/s bf16, 80 GB, 2039 GB/s.
    'a100': Card('NVIDIA A100-SXM4-80GB', Chip('A100 SXM', 85_100_068_864, 312e12, 2.03904e12,
                                               'https://www.nvidia.com/en-us/data-center/a100/', gpu=True),
                 8, 108, 64, 167_936, 166_912, 41_943_040, 1.41),
}
CHIPS.update({card.device_kind: card.chip for card in GPUS.values()})
# Without a GPU, XLA cannot time Triton's GEMM tilings and its untuned choice fails on some dots
# ("Couldn't find output tile sizes"): GPU plans compile the GEMMs for cuBLAS, as XLA does where
# Triton loses.
COMPILER_OPTIONS = {'xla_gpu_enable_triton_gemm': False}

# Slice shapes of Cloud TPU's documentation; `--list-topologies` prints those this libtpu accepts.
TOPOLOGIES = (
    [f'v4:{s}' for s in ('2x2x1', '2x2x2', '2x2x4', '2x4x4', '4x4x4', '4x4x8', '4x8x8', '8x8x8')]
    + [f'v5e:{s}' for s in ('1x1', '2x2', '2x4', '4x4', '4x8', '8x8', '8x16', '16x16')]
    + [f'v5p:{s}' for s in ('2x2x1', '2x2x2', '2x2x4', '2x4x4', '4x4x4', '4x4x8', '4x8x8', '8x8x8')]
    + [f'v6e:{s}' for s in ('1x1', '2x2', '2x4', '4x4', '4x8', '8x8', '8x16', '16x16')]
    + [f'{card}:{s}' for card in GPUS for s in ('1', '8', '2x8', '4x8')])

# Classes of the data sets whose presets configs/ knows (the planner reads no data).
NUM_CLASSES = {'digits': 10, 'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000, 'imagenet21k': 21843,
               'oxford_iiit_pet': 37, 'oxford_flowers102': 102}

COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
                'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_COLLECTIVE_RE = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.*?)\s(?P<op>' + '|'.join(COLLECTIVES)
    + r')(?P<start>-start)?\(')
_COMPUTATION_RE = re.compile(r'^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s+\(.*\)\s+->\s+(?P<results>.*)\{\s*$')
_ARRAY_RE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')


class DoesNotFit(TrainingError):
    """The compiler refused the program for lack of HBM (RESOURCE_EXHAUSTED)."""


# --- Topology -----------------------------------------------------------------------------------

def topology_devices(name: str) -> list:
    """The devices of a TPU slice by libtpu's name (e.g. 'v5e:4x4') or of NVIDIA GPUs ('h100:2x8');
    ConfigError when unknown."""
    if name.partition(':')[0] in GPUS:
        return gpu_devices(name)
    # libtpu's start-up asks the environment of a TPU VM; off one, say so instead of warning. It
    # loads only to compile here: other processes (tests, other plans) may load it beside this one.
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform='tpu').devices)
    except Exception as e:  # noqa: BLE001 - libtpu missing or the name unknown: both bad input
        text = cli.error_message(e)
        if 'not installed' in text.lower() or 'no module' in text.lower():
            raise ConfigError(f'--topology={name}: libtpu is not installed: pip install '
                              f'"jax[tpu]=={jax.__version__}" ({text})') from None
        raise ConfigError(f'--topology={name}: {text} (vit-plan --list-topologies lists known names)'
                          ) from None


def gpu_devices(name: str) -> list:
    """The devices of `card:GPUS` or `card:HOSTSxGPUS`, one process per host, compile-only."""
    card, _, shape = name.partition(':')
    parts = shape.split('x')
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f'--topology={name}: expected {card}:GPUS or {card}:HOSTSxGPUS, e.g. {card}:8 '
                          f'or {card}:2x8')
    hosts, per_host = (1, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    try:
        topology = topologies.get_topology_desc(
            platform='cuda', topology=f'1x{hosts}x{per_host}', target_config=GPUS[card].target_config())
    except NotImplementedError:
        raise ConfigError(
            f'--topology={name}: compiling for NVIDIA GPUs needs JAX\'s CUDA plugin: pip install '
            f'"jax[cuda12]=={jax.__version__}" (without a GPU, the plugin alone: pip install --no-deps '
            f'--target DIR jax-cuda12-plugin=={jax.__version__} jax-cuda12-pjrt=={jax.__version__} '
            'nvidia-cuda-runtime-cu12, then PYTHONPATH=DIR vit-plan ...)') from None
    return list(topology.devices)


def chip_of(devices: list) -> Chip:
    kind = str(devices[0].device_kind)
    if kind not in CHIPS:
        raise ConfigError(f'no published figures for {kind!r} in vit_jax.plan.CHIPS '
                          f'(known: {", ".join(CHIPS)})')
    return CHIPS[kind]


# --- What the compiled program says ---------------------------------------------------------------

def _array_bytes(text: str) -> list[int]:
    out = []
    for dtype, dims in _ARRAY_RE.findall(text):
        out.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d))
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {'count', 'bytes'}} of the collectives in compiled HLO text, by result size.

    TPU programs wrap a collective into fusions (async-collective-start) that may repeat its
    instruction; one `channel_id` is one collective. An async `*-start` of all-gather /
    collective-permute returns (operands, results, ...): its results count. libtpu writes a
    reduce-scatter as an all-reduce inside an `all-reduce-scatter` fusion that keeps this device's
    slice: it counts as a reduce-scatter of the fusion's results. Counted as written: one inside a
    loop body runs once per iteration but is counted once.
    """
    seen: dict[tuple, int] = {}
    scatter_results: str | None = None   # the result types of the enclosing all-reduce-scatter fusion
    for i, line in enumerate(hlo_text.splitlines()):
        header = _COMPUTATION_RE.match(line)
        if header:
            scatter_results = header['results'] if header['name'].startswith('all-reduce-scatter') else None
            continue
        m = _COLLECTIVE_RE.match(line)
        if not m:
            continue
        op, sizes = m['op'], _array_bytes(m['type'])
        if op == 'all-reduce' and scatter_results is not None:
            op, sizes = 'reduce-scatter', _array_bytes(scatter_results)
        elif m['start'] and op != 'all-reduce' and len(sizes) >= 2:
            sizes = sizes[len(sizes) // 2:] if op != 'collective-permute' else sizes[1:2]
        channel = re.search(r'channel_id=(\d+)', line)
        key = (op, channel[1] if channel else f'line {i}')
        seen[key] = max(seen.get(key, 0), sum(sizes))
    found = {op: dict(count=0, bytes=0) for op in COLLECTIVES}
    for (op, _), size in seen.items():
        found[op]['count'] += 1
        found[op]['bytes'] += size
    return found


def model_flops_per_image(model_config: Any, image_size: int, num_classes: int) -> float | None:
    """Forward matmul FLOPs of one image through a plain ViT (2 per multiply-add); None for others."""
    mc = model_config
    if mc.get('resnet') or 'transformer' not in mc or mc.get('patches') is None:
        return None
    p = int(mc.patches.size[0])
    d, m, layers = int(mc.hidden_size), int(mc.transformer.mlp_dim), int(mc.transformer.num_layers)
    n = (image_size // p) * (image_size // int(mc.patches.size[1]))
    t = n + (1 if str(mc.get('classifier', 'token')).startswith('token') else 0)
    per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
    rep = int(mc.get('representation_size') or 0)
    head = 2 * d * rep + 2 * rep * num_classes if rep else 2 * d * num_classes
    return float(2 * n * p * p * 3 * d + layers * per_layer + head)


@dataclasses.dataclass
class Plan:
    """One compiled step: its figures per chip."""

    topology: str
    chip: Chip
    num_devices: int
    num_processes: int
    mesh: dict
    memory: dict            # memory_analysis(): arguments, outputs, aliased, temporaries, code
    compiler_flops: float   # cost_analysis()['flops'] (loop bodies counted once); 0 where unknown
    bytes_accessed: float   # cost_analysis()['bytes accessed'] (loop bodies counted once); 0 where unknown
    model_flops: float | None   # analytic: 3 x forward matmul FLOPs per chip
    collectives: dict
    has_loops: bool
    compile_s: float
    remat: bool = False
    cost_known: bool = True   # XLA's GPU compiler gives no cost analysis
    compiled: Any = dataclasses.field(default=None, repr=False)   # the jax Compiled object

    @property
    def hbm_total(self) -> int:
        m = self.memory
        return m['arguments'] + m['outputs'] - m['aliased'] + m['temporaries'] + m['code']

    @property
    def fits(self) -> bool:
        """Whether the per-chip total fits what a program may use of the chip (`Chip.usable_bytes`). The
        compiler refuses some programs that do not (RESOURCE_EXHAUSTED) but not all: ViT-L/16 at 256
        images per v5e chip compiled with 16.4 GiB of temporaries."""
        return self.hbm_total <= self.chip.usable_bytes

    def does_not_fit_line(self) -> str:
        return (f'{_gib(self.hbm_total)} per chip (arguments + outputs - aliased + temporaries + code) '
                f'exceeds the {self.chip.capacity()} of a {self.chip.name} chip')

    @property
    def flops(self) -> float:
        """FLOPs per chip the roofline uses: the compiler's, or the analytic count (with remat's second
        forward pass: 4 instead of 3 forwards) where loops hide some from the compiler's."""
        return max(self.compiler_flops, (self.model_flops or 0.0) * (4 / 3 if self.remat else 1))

    @property
    def step_time_bound(self) -> float:
        return max(self.flops / self.chip.peak_bf16_flops, self.bytes_accessed / self.chip.hbm_bytes_per_s)

    @property
    def mfu_bound(self) -> float | None:
        if not self.model_flops or not self.step_time_bound:
            return None
        return self.model_flops / (self.chip.peak_bf16_flops * self.step_time_bound)


def _does_not_fit_line(e: Exception) -> str | None:
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'exceeds available' not in text.lower():
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if 'exceeds' in ln or 'RESOURCE_EXHAUSTED' in ln:
            return ' '.join(ln.split())
    return lines[0]


def compile_plan(config: Any, topology: str, num_classes: int, devices: list | None = None) -> Plan:
    """Compiles vit-train's step for `topology`; DoesNotFit with the compiler's line when it cannot."""
    devices = devices if devices is not None else topology_devices(topology)
    chip = chip_of(devices)
    mesh = sharding.create_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices=devices)
    chips = mesh.devices.size
    processes = len({d.process_index for d in mesh.devices.flat})
    train.check_batch(config, chips, processes)
    image_size = int(config.pp.crop)
    model = build_model(config.model, num_classes)
    setup = train.make_setup(config, model, mesh, image_size)
    step = train.jit_train_step(config, model, setup, mesh)
    state = train.sharded_abstract(setup.abstract_state, setup.shardings)
    batch = train.abstract_batch(config, num_classes, image_size, mesh)
    t0 = time.perf_counter()
    try:
        with traced_for(devices[0].platform):   # the model as vit-train traces it there
            lowered = step.lower(state, batch)
        compiled = tflib.call_quietly(lambda: lowered.compile(COMPILER_OPTIONS if chip.gpu else None))
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError / JaxRuntimeError by jax version
        line = _does_not_fit_line(e)
        if line is None:
            raise
        raise DoesNotFit(line) from None
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()   # None from XLA's GPU compiler
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    text = compiled.as_text()
    per_image = model_flops_per_image(config.model, image_size, num_classes)
    return Plan(
        topology=topology, chip=chip, num_devices=chips, num_processes=processes, mesh=dict(mesh.shape),
        memory=dict(arguments=int(mem.argument_size_in_bytes), outputs=int(mem.output_size_in_bytes),
                    aliased=int(mem.alias_size_in_bytes), temporaries=int(mem.temp_size_in_bytes),
                    code=int(mem.generated_code_size_in_bytes)),
        compiler_flops=float(cost.get('flops', 0.0)), bytes_accessed=float(cost.get('bytes accessed', 0.0)),
        model_flops=3 * per_image * int(config.batch) / chips if per_image else None,
        collectives=collectives(text), has_loops=bool(re.search(r'\swhile\(', text)), compile_s=compile_s,
        remat=bool(config.model.get('remat')), cost_known=bool(cost), compiled=compiled)


# --- Report ---------------------------------------------------------------------------------------

def _gib(n: float) -> str:
    return f'{n / GiB:.2f} GiB'


def _size(n: float) -> str:
    return _gib(n) if n >= GiB / 10 else f'{n / 2 ** 20:.2f} MiB'


def _flops(n: float) -> str:
    return f'{n / 1e12:.3f} TFLOP' if n >= 1e11 else f'{n / 1e9:.3f} GFLOP'


def report(plan: Plan, config: Any) -> str:
    c, m = plan.chip, plan.memory
    loops = ' (loop bodies counted once)' if plan.has_loops else ''
    per_chip = int(config.batch) // plan.num_devices
    lines = [
        f'{config.model.get("model_name") or "model"} on {plan.topology} ({c.name}): '
        f'{plan.num_devices} chips, '
        f'{plan.num_processes} processes; mesh {plan.mesh}; batch {config.batch} ({per_chip} per chip), '
        f'accum_steps {config.accum_steps}, {config.pp.crop} px; compiled in {plan.compile_s:.1f} s',
        f'HBM per chip: arguments {_size(m["arguments"])}, temporaries {_size(m["temporaries"])}, outputs '
        f'{_size(m["outputs"])}, aliased {_size(m["aliased"])}, code {_size(m["code"])}; total '
        f'{_gib(plan.hbm_total)} of {c.capacity()} ({100 * plan.hbm_total / c.usable_bytes:.0f} %)',
        'FLOPs per chip per step: '
        + (f'compiler {_flops(plan.compiler_flops)}{loops}' if plan.cost_known
           else 'compiler: none (XLA\'s GPU compiler gives no cost analysis)')
        + (f', model {_flops(plan.model_flops)} (analytic, 3 x forward)' if plan.model_flops else ''),
        'Collectives' + (loops or '') + ': ' + ', '.join(
            f'{op} {v["count"]} ({_size(v["bytes"])})' for op, v in plan.collectives.items() if v['count'])
        if any(v['count'] for v in plan.collectives.values()) else 'Collectives: none',
        f'Roofline: step >= {1e3 * plan.step_time_bound:.3g} ms (compute '
        f'{1e3 * plan.flops / c.peak_bf16_flops:.3g} ms at {c.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16; '
        + (f'HBM traffic {_size(plan.bytes_accessed)}{loops}: '
           f'{1e3 * plan.bytes_accessed / c.hbm_bytes_per_s:.3g} ms at {c.hbm_bytes_per_s / 1e9:.0f} GB/s)'
           if plan.cost_known else 'HBM traffic unknown: compute only)')
        + (f' -> MFU <= {100 * plan.mfu_bound:.0f} %' if plan.mfu_bound else ''),
    ]
    return '\n'.join(lines)


def list_topologies() -> str:
    """The slices and GPU sets of TOPOLOGIES that this libtpu / CUDA plugin accept, with their devices
    and processes."""
    rows = []
    for name in TOPOLOGIES:
        try:
            devices = sharding.one_device_per_chip(topology_devices(name))
        except ConfigError:
            continue
        processes = len({d.process_index for d in devices})
        rows.append(f'{name:10s} {len(devices):4d} chips {processes:4d} processes ({devices[0].device_kind})')
    return '\n'.join(rows)


# --- Search ---------------------------------------------------------------------------------------

def search_candidates(num_chips: int) -> list[dict]:
    """Overrides to try, cheapest in communication and recomputation first."""
    fsdps = sorted({1, num_chips} | ({8} if num_chips % 8 == 0 and num_chips > 8 else set()))
    out = []
    for remat in (False, True):
        for fsdp in fsdps:
            for accum in (1, 2, 4, 8, 16):
                out.append({'model.scan_layers': True, 'model.remat': remat, 'mesh.fsdp': fsdp,
                            'mesh.data': -1, 'accum_steps': accum})
    return out


def search(config: Any, topology: str, num_classes: int, out: Any = sys.stdout) -> list[tuple[dict, Plan]]:
    """Compiles the candidates; for each (remat, fsdp) the smallest accum_steps that fits. Best first."""
    devices = topology_devices(topology)
    chips = len(sharding.one_device_per_chip(devices))
    fitting: list[tuple[dict, Plan]] = []
    done: set = set()
    for overrides in search_candidates(chips):
        key = (overrides['model.remat'], overrides['mesh.fsdp'])
        if key in done:
            continue
        trial = _with_overrides(config, overrides)
        try:
            plan = compile_plan(trial, topology, num_classes, devices)
        except DoesNotFit as e:
            print(f'  {as_flags(overrides)}: does not fit ({e})', file=out, flush=True)
            continue
        except ConfigError as e:
            print(f'  {as_flags(overrides)}: {e}', file=out, flush=True)
            done.add(key)
            continue
        if not plan.fits:
            print(f'  {as_flags(overrides)}: does not fit ({plan.does_not_fit_line()})', file=out, flush=True)
            continue
        print(f'  {as_flags(overrides)}: {_gib(plan.hbm_total)}, step >= '
              f'{1e3 * plan.step_time_bound:.1f} ms ({plan.compile_s:.0f} s)', file=out, flush=True)
        fitting.append((overrides, plan))
        done.add(key)
    return sorted(fitting, key=lambda r: (r[1].step_time_bound, r[1].hbm_total))


def ladder(num_chips: int) -> list[dict]:
    """Settings from the cheapest to the most frugal: scan_layers, + remat, + fsdp over every chip,
    + micro-batches (accum_steps 2 ... 16)."""
    base = {'model.scan_layers': True}
    steps = [base, {**base, 'model.remat': True}]
    if num_chips > 1:
        steps.append({**base, 'model.remat': True, 'mesh.data': 1, 'mesh.fsdp': num_chips})
    return steps + [{**steps[-1], 'accum_steps': a} for a in (2, 4, 8, 16)]


def first_fit(config: Any, topology: str, num_classes: int, devices: list | None = None
              ) -> tuple[dict, Plan | None, str, float]:
    """(overrides, plan, last does-not-fit line, seconds of every compile) of the first `ladder`
    step that fits (plan None: none did). Settings the config already has are not undone (an
    accum_steps below the config's is skipped)."""
    devices = devices if devices is not None else topology_devices(topology)
    chips = len(sharding.one_device_per_chip(devices))
    t0, last = time.perf_counter(), ''
    for overrides in ladder(chips):
        if int(overrides.get('accum_steps', config.accum_steps)) < int(config.accum_steps):
            continue
        if overrides.get('model.remat') is None and config.model.get('remat'):
            continue
        try:
            plan = compile_plan(_with_overrides(config, overrides), topology, num_classes, devices)
        except DoesNotFit as e:
            last = str(e)
            continue
        except ConfigError as e:   # e.g. a batch that accum_steps does not divide
            last = str(e)
            break
        if not plan.fits:
            last = plan.does_not_fit_line()
            continue
        return overrides, plan, last, time.perf_counter() - t0
    return {}, None, last, time.perf_counter() - t0


def _with_overrides(config: Any, overrides: dict) -> Any:
    """A copy of the resolved config with `overrides` ({'model.remat': True, ...}) applied."""
    trial = config.copy_and_resolve_references()
    with trial.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split('.')
            node = trial
            for part in parents:
                node = node[part]
            node[leaf] = value
    return trial


def as_flags(overrides: dict) -> str:
    """The overrides as vit-train's command-line flags."""
    return ' '.join(f'--config.{k}={v}' for k, v in overrides.items())


# --- Command line ---------------------------------------------------------------------------------

def _parser():
    parser = cli.argument_parser(
        'vit-plan', __doc__.split('\n\n')[0],
        epilog='Every other argument is vit-train\'s: --config=FILE[:ARG] and --config.<field>=<value>.')
    parser.add_argument('--topology', metavar='NAME',
                        help='TPU slice by libtpu\'s name, e.g. v5e:4x4, v4:2x2x2; NVIDIA GPUs as '
                             f'CARD:GPUS or CARD:HOSTSxGPUS, CARD one of {", ".join(GPUS)}: h100:8, h100:2x8')
    parser.add_argument('--list-topologies', action='store_true',
                        help='print the TPU slices and GPU sets this machine can compile for')
    parser.add_argument('--num-classes', type=cli.positive_int, default=None, metavar='N',
                        help='classes of the head (default: from config.dataset for '
                             f'{", ".join(NUM_CLASSES)})')
    parser.add_argument('--search', action='store_true',
                        help='compile variations (remat, mesh.fsdp, accum_steps, scan_layers) and print '
                             'those that fit, best first')
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = _parser()
    if any(a in ('-h', '--help') for a in argv[1:]):
        parser.print_help()
        print('\n' + __doc__)
        return 0
    args, rest = parser.parse_known_args(argv[1:])
    if not os.environ.get('JAX_PLATFORMS'):
        jax.config.update('jax_platforms', 'cpu')   # compile-only: leave this machine's accelerators alone
    if args.list_topologies:
        print(list_topologies())
        return 0
    if not args.topology:
        raise ConfigError('--topology is required, e.g. --topology=v5e:4x4 (vit-plan --list-topologies)')
    config, _ = main_lib.parse([argv[0], *rest], require_workdir=False)
    num_classes = args.num_classes or NUM_CLASSES.get(str(config.dataset))
    if not num_classes:
        raise ConfigError(f'config.dataset={config.dataset!r}: give its number of classes with --num-classes')
    devices = topology_devices(args.topology)
    if args.search:
        print(f'Searching {args.topology} for {config.model.get("model_name") or "the model"} at batch '
              f'{config.batch}:', flush=True)
        found = search(config, args.topology, num_classes)
        if not found:
            print('vit-plan: no setting tried fits', file=sys.stderr)
            return cli.EXIT_FAILED
        print('Settings that fit, best first (vit-train overrides):')
        for overrides, plan in found:
            mfu = f', MFU <= {100 * plan.mfu_bound:.0f} %' if plan.mfu_bound else ''
            print(f'  {as_flags(overrides)}  # {_gib(plan.hbm_total)} of {plan.chip.capacity()}, '
                  f'step >= {1e3 * plan.step_time_bound:.1f} ms{mfu}')
        return 0
    try:
        plan = compile_plan(config, args.topology, num_classes, devices)
    except DoesNotFit as e:
        print(f'vit-plan: does not fit: {e}', flush=True)
        return cli.EXIT_FAILED
    print(report(plan, config), flush=True)
    if not plan.fits:
        print(f'vit-plan: does not fit: {plan.does_not_fit_line()}', flush=True)
        return cli.EXIT_FAILED
    return 0


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 fits, 1 does not fit, 2 bad input."""
    sys.exit(cli.run_cli('vit-plan', lambda: main(argv)))


if __name__ == '__main__':
    run()
