"""Fine-tuning on your own images: --config=configs/custom.py:SOURCE,FOLDER

SOURCE is where the weights come from, anything the one loader reads: a catalogue name
(`ViT-B_16`, `augreg/B_16`, ...; downloaded once and verified), an `.npz` / timm / Hugging Face
checkpoint, or a vit-train workdir (e.g. the demo's `workdirs/digits`), local or gs://. The model
is the source's own architecture and the input size its own resolution (the catalogue's
ImageNet-21k models: 224 px), so nothing is resized unless you ask (--config.pp.crop=384 resizes the
position embeddings as the original). FOLDER is `root/<class>/<image>` (10 % held out for eval:
pp.holdout) or `root/train/<class>/...` with `root/test|val/<class>/...`, local or gs://; a CSV of
`path,label[,split]` rows works too (vit_jax.input_pipeline).

The recipe is the paper's for small data sets (App. B.1.1, the Pets / Flowers setting): 500 steps,
SGD momentum 0.9, lr 0.01, 50 warm-up steps then cosine, clip at 1, a new zero head; with a batch
of 64 (no gradient accumulation) that fits a laptop: the paper's 512 is --config.batch=512
--config.accum_steps=8 on a small machine. vit-train prints what was loaded and what was
re-initialised; a source whose architecture differs from config.model is refused naming the facts.
"""

import ml_collections

from vit_jax.checkpoint import arch, loader
from vit_jax.checkpoint import workdir as workdir_lib
from vit_jax.configs import common
from vit_jax.errors import ConfigError
from vit_jax.models import MODEL_CONFIGS, family
from vit_jax.models import get_config as model_config

CATALOGUE_SIZE = 224   # the catalogue's ImageNet-21k pre-trainings (hub.IMAGENET21K) are 224 px


def source_model(source: str) -> tuple[ml_collections.ConfigDict, int]:
    """(model config, image size) of a checkpoint source, read from the source itself."""
    if source in MODEL_CONFIGS:   # a catalogue model: its config, without downloading the weights
        config = model_config(source)
        if family(config) == 'LiT':
            raise ConfigError(f'{source} is a LiT image-text model: fine-tune an image classifier')
        return config, CATALOGUE_SIZE
    found = loader.read(source)
    if found.format == 'workdir':
        size = int(workdir_lib.read_config(found.path).get('pp', {}).get('crop') or 0)
    else:
        size = arch.image_size(found.params, found.model_config)
    return ml_collections.ConfigDict(found.model_config.to_dict()), size


def get_config(arg: str = 'ViT-B_16,images') -> ml_collections.ConfigDict:
    source, folder = (arg.split(',', 1) + ['images'])[:2]
    config = common.get_config()
    config.model, size = source_model(source)
    config.model_type = family(config.model)
    config.pretrained_path = source
    config.dataset = folder
    config.pp.update(dict(crop=size, train='train', test='test'))
    config.update(dict(total_steps=500, base_lr=0.01, warmup_steps=50, batch=64, batch_eval=64,
                       accum_steps=1))
    return config
