"""EAGRNet face parser (paper §3.2) trained on a face-parsing dataset in a local folder.

CelebAMask-HQ (unzipped as CelebAMask-HQ/CelebA-HQ-img/ and CelebAMask-HQ-mask-anno/) or
LaPa (LaPa/{train,val,test}/{images,labels}/); the layout is detected and the classes are
mapped onto our 11 by the tables in ``sdgan_jax.datasets.parsing_folders`` (which also
documents the ambiguous parts: ears, neck, hat, glasses, left/right).

  python run.py --config=configs/eagrnet_folder.py --workdir=workdirs/parser_lapa \
      --config.data.folder=/data/LaPa
  python run.py --config=configs/eagrnet_folder.py --workdir=workdirs/parser_celebamask \
      --config.data.folder=/data/CelebAMask-HQ --config.data.eval_split=val
  # then prepare the SDGAN data with the parser's maps:
  python tools/prepare_data.py --source celeba_files --celeba_dir ~/celeba \
      --output data/celeba_parsed --parser workdirs/parser_lapa

Validation: LaPa's 'val' split; CelebAMask-HQ has none in its folder, so 'val' is its last
``data.holdout`` images by index and 'train' the rest. The optional argument after the
colon is the resolution (128 default).
"""

import ml_collections

from sdgan_jax.configs import eagrnet_polygons


def get_config(resolution: str = '128') -> ml_collections.ConfigDict:
  config = eagrnet_polygons.get_config(resolution)
  config.data = ml_collections.ConfigDict()
  config.data.source = 'folder'
  config.data.folder = ''  # CelebAMask-HQ or LaPa root
  config.data.dataset = ''  # unused here (the 'prepared' source's key)
  config.data.layout = 'auto'  # 'auto', 'celebamask_hq' or 'lapa'
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.sides = 'position'  # left/right parts named by image position
  config.data.holdout = 1000  # CelebAMask-HQ images held out as 'val'
  config.data.augment = True  # random horizontal flips
  config.train.num_steps = 80_000
  return config
