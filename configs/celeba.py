"""SDGAN on CelebA, the paper's recipe (paper §4.1; hyper-parameters from DESIGN §2).

  python run.py --config=configs/celeba.py --workdir=workdirs/celeba128
  python run.py --config=configs/celeba.py:64 --workdir=workdirs/celeba64

The optional argument after the colon is the resolution: 128 (default, the paper's training
and qualitative resolution) or 64 (the quantitative tables).
"""

import ml_collections


def get_config(resolution: str = '128') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.resolution = int(resolution)
  config.num_classes = 11          # Helen-style parsing classes; mask covers classes 1-9
  config.identity_dim = 2048       # identity feature from the pretrained face classifier

  config.model = ml_collections.ConfigDict()
  config.model.generator = ml_collections.ConfigDict({'preset': 'paper'})
  config.model.discriminator = ml_collections.ConfigDict({'kind': 'global'})
  config.model.identity = ml_collections.ConfigDict({'num_identities': 1200, 'embed_dim': 1024})

  config.loss = ml_collections.ConfigDict()
  config.loss.lambda_adv = 1.0
  config.loss.lambda_ssim = 1.0          # not given in the paper: our choice
  config.loss.lambda_perceptual = 20.0   # authors' code
  config.loss.lambda_contrastive = 1.0   # authors' code
  config.loss.lambda_l1 = 0.0            # eq. 9 has no L1 term; the authors' code uses 10
  config.loss.contrastive_margin = 3.0
  config.loss.contrastive_squared = True

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.identity_steps = 1  # update ratio identity-net : D : G = 1 : 1 : 3
  config.train.d_steps = 1
  config.train.g_steps = 3
  return config
