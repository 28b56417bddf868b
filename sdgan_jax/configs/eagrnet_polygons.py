"""EAGRNet face parser (paper §3.2) trained on a prepared dataset's landmark-polygon maps.

The default parser data: the eye-aligned crops of ``tools/prepare_data.py`` with their
11-class landmark-polygon maps (no parsing dataset needed; it learns to reproduce and
smooth the polygons, and never sees 'hair'). Validation: mean IoU and pixel accuracy on
the prepared 'test' split.

  python tools/prepare_data.py --source samples --output data/samples
  python run.py --config=configs/eagrnet_polygons.py --workdir=workdirs/parser_polygons \
      --config.data.dataset=data/samples/sdgan_faces/samples_128/1.0.0
  # then prepare with the trained parser's maps instead of the polygons:
  python tools/prepare_data.py --source samples --output data/samples_parsed \
      --parser workdirs/parser_polygons

The optional argument after the colon is the resolution (128 default, or 64):
``--config=configs/eagrnet_polygons.py:64``. Objective, optimizer and schedule follow
EAGRNet (``sdgan_jax.train_parser``): SGD with momentum 0.9, weight decay 5e-4 and the
poly learning-rate decay; the backbone is ResNet-101 as in EAGRNet.
"""

import ml_collections


def get_config(resolution: str = '128') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'parser'  # run.py dispatches to sdgan_jax.train_parser
  config.seed = 0
  config.dtype = 'float32'
  config.resolution = int(resolution)
  config.num_classes = 11  # features.SEMANTIC_CLASSES

  config.data = ml_collections.ConfigDict()
  config.data.source = 'prepared'  # 'prepared' (this file) or 'folder' (eagrnet_folder.py)
  config.data.dataset = ''  # the prepared TFDS dataset dir (holds dataset_info.json)
  config.data.eval_split = 'test'
  config.data.augment = True  # flip (left/right classes swapped) + the crop jitter

  # sdgan_jax.models.eagrnet.EAGRNet fields (num_classes and dtype come from above).
  config.model = ml_collections.ConfigDict(
    {
      'depth': 101,
      'backbone_width': 64,
      'num_vertices': 16,
      'context_features': 512,
      'edge_features': 256,
      'decoder_features': 256,
      'skip_features': 48,
      'dropout_rate': 0.1,
      'norm': 'batch',
    }
  )

  config.loss = ml_collections.ConfigDict()
  config.loss.aux_weight = 0.4  # context-way deep supervision (our choice of weight)
  config.loss.edge_weight = 1.0
  config.loss.boundary_weight = 1.0

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'  # or 'adam' (b1, b2)
  config.optim.learning_rate = 1e-2
  config.optim.momentum = 0.9
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'poly'  # 'poly', 'cosine' or 'constant'
  config.optim.poly_power = 0.9
  config.optim.warmup_steps = 500

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16
  config.train.num_steps = 40_000
  config.train.log_every = 100

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 2_000
  config.checkpoint.keep_latest = 3
  config.checkpoint.best_metric = 'eval/miou'  # also keep the best by this; '' for none
  config.checkpoint.best_mode = 'max'

  config.eval = ml_collections.ConfigDict()
  config.eval.num_batches = 20
  return config
