"""SDGAN on CelebA, the paper's recipe (paper §4.1) with the authors' hyper-parameters.

Where they come from: docs/training.md and docs/deviations.md.

From the official CelebA files (img_align_celeba/, identity_CelebA.txt, ...) in ~/celeba:

  make weights                                   # VGG-16, dlib ResNet, FID Inception
  python tools/prepare_data.py --source celeba_files --celeba_dir ~/celeba \
      --output data/celeba_prepared               # crops, masks, maps, split, identity bank
  python run.py --config=configs/celeba.py --workdir=workdirs/celeba128 \
      --config.data.dataset=data/celeba_prepared/<dataset dir printed by prepare_data>
  python run.py --config=configs/celeba.py:64 --workdir=workdirs/celeba64 \
      --config.data.dataset=...

  python run.py --config=configs/celeba.py:authors ...      # the authors' recipe

The optional argument after the colon names the resolution, the recipe or both, comma
separated (``:64,authors``). Resolution: 128 (default, the paper's training and qualitative
resolution) or 64 (the quantitative tables). Recipe: ``paper`` (default: the paper's networks
and objective where it describes them) or ``authors`` (``authors_recipe``: what the authors'
training script does, docs/deviations.md lists each choice).
"""

import ml_collections

RECIPES = ('paper', 'authors')


def get_config(arg: str = '128') -> ml_collections.ConfigDict:
  resolution, recipe = '128', 'paper'
  for token in filter(None, (t.strip() for t in arg.split(','))):
    if token.isdigit():
      resolution = token
    elif token in RECIPES:
      recipe = token
    else:
      raise ValueError(
        f'configs/celeba.py:{arg}: {token!r} is neither a resolution (128, 64) '
        f'nor a recipe ({", ".join(RECIPES)})'
      )
  config = _paper_config(resolution)
  return authors_recipe(config) if recipe == 'authors' else config


def authors_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` changed to what the authors' training script does (docs/deviations.md):
  their three networks, their loss weights and contrastive form, and their training-mode
  identity net and D inside the generator's loss."""
  config.recipe = 'authors'
  config.model.generator = ml_collections.ConfigDict({'preset': 'authors'})
  config.model.discriminator = ml_collections.ConfigDict({'kind': 'global'})
  config.model.identity = ml_collections.ConfigDict({'preset': 'authors'})
  config.loss.contrastive_mode = 'authors'
  # losses.authors_weights(): LSGAN as a plain MSE (x2), 10 L1, 20 perceptual, no SSIM
  config.loss.lambda_adv = 2.0
  config.loss.lambda_ssim = 0.0
  config.loss.lambda_l1 = 10.0
  config.train.g_loss_networks = 'train'
  config.data.augmentation = 'authors'
  config.data.sampling = 'authors'
  config.inference.norm_statistics = 'per_image'
  return config


def _paper_config(resolution: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.recipe = 'paper'  # which recipe built this config (get_config's argument)
  config.seed = 0
  config.dtype = 'float32'  # compute dtype; 'bfloat16' keeps float32 parameters
  config.resolution = int(resolution)
  config.num_classes = 11  # Helen-style parsing classes; mask covers classes 1-9
  # Identity feature of the target person (paper §3.3), from a pretrained face network: the
  # dlib ResNet descriptor (128-d) is what the registries provide; the authors used a 2048-d
  # classifier feature, FaceNet gives 512 (with user-supplied weights).
  config.identity_dim = 128

  config.data = ml_collections.ConfigDict()
  config.data.dataset = ''  # prepared dataset dir (tools/prepare_data.py)
  config.data.identity_backbone = 'dlib_resnet'
  config.data.identity_bank = ''  # default: the bank beside the dataset
  # G's identity input: 'image', the target image's own feature (the paper's best ablation
  # row, V6: per-image refined feature F1; the authors' code), or 'identity_mean', the mean
  # over the target person's crops (docs/training.md "The inputs of one example")
  config.data.target_feature = 'image'
  # 'shift_flip': 0-16 px crop shift + flip; 'authors': their 1.33-2x zoom box, LANCZOS, no
  # flip (docs/training.md "Augmentation")
  config.data.augmentation = 'shift_flip'
  # 'epoch': epoch permutations, example-weighted partners and targets; 'authors': their
  # sampler, identities uniform with replacement (docs/training.md "Sampling")
  config.data.sampling = 'epoch'

  config.model = ml_collections.ConfigDict()
  config.model.generator = ml_collections.ConfigDict({'preset': 'paper'})
  config.model.discriminator = ml_collections.ConfigDict({'kind': 'global'})
  config.model.identity = ml_collections.ConfigDict({'num_identities': 1200, 'embed_dim': 1024})

  config.loss = ml_collections.ConfigDict()
  config.loss.lambda_adv = 1.0
  config.loss.lambda_ssim = 1.0  # not given in the paper: our choice
  config.loss.lambda_perceptual = 20.0  # authors' code
  config.loss.lambda_contrastive = 1.0  # authors' code
  config.loss.lambda_l1 = 0.0  # eq. 9 has no L1 term; the authors' code uses 10
  config.loss.contrastive_margin = 3.0  # authors' code (the paper gives none)
  config.loss.contrastive_mode = 'paper'  # eq. 8; 'authors': 0.5 * (y d^2 + (1-y) hinge^2)
  # Extra push of the output away from the source person (neither paper nor authors): 0 off.
  config.loss.lambda_source_push = 0.0
  config.loss.perceptual_weights = 'vgg16_imagenet'  # 'random' only for smoke tests
  config.loss.perceptual_layer = 'relu3_3'
  config.loss.perceptual_input_convention = 'caffe'  # the converted Keras VGG-16
  # The caffe-convention VGG sees 0-255 inputs, torchvision's (x - mean) / std: its relu3_3
  # features are ~255 * 0.226 = 57.6x larger, and the authors' lambda 20 assumes torchvision.
  config.loss.perceptual_feature_scale = 1 / 57.6

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adam'
  config.optim.learning_rate = 1e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.identity_steps = 1  # update ratio identity-net : D : G = 1 : 1 : 3
  config.train.d_steps = 1
  config.train.g_steps = 3
  # The authors draw a fresh batch for every update (identity net, D's fakes, D's reals and
  # each G update: 6 batches a step); on CelebA's 35k crops that is cheap and keeps G from
  # training on the very batch D just fitted.
  config.train.fresh_batches = True
  # The identity net and D inside G's loss: 'eval' (running batch-norm statistics, D's
  # spectral-norm vectors fixed) or 'train' (the authors': batch statistics, both advance on
  # every G update). docs/training.md says why the paper recipe keeps 'eval'.
  config.train.g_loss_networks = 'eval'
  config.train.ema_decay = 0.999
  config.train.num_steps = 200_000
  config.train.log_every = 100
  config.train.image_every = 2_000

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 5_000
  config.checkpoint.keep_latest = 3
  config.checkpoint.best_metric = 'eval/ssim'  # also keep the best by this; '' for none
  config.checkpoint.best_mode = 'max'

  config.inference = ml_collections.ConfigDict()
  # batch norm at evaluation and export (authors' generator only; the paper preset has
  # none): 'running' statistics (the EMA of the live ones) or 'per_image', the authors' demo
  config.inference.norm_statistics = 'running'

  config.eval = ml_collections.ConfigDict()
  config.eval.num_batches = 20
  return config
