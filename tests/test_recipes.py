"""The reference configs' recipes: ``configs/celeba.py`` (paper) and ``:authors``."""

import pytest

from sdgan_jax import losses, train
from sdgan_jax.config import ConfigError
from sdgan_jax.configs import celeba


def test_recipe_argument_sets_resolution_and_recipe():
  assert (celeba.get_config().recipe, celeba.get_config().resolution) == ('paper', 128)
  cfg = celeba.get_config('64,authors')
  assert (cfg.recipe, cfg.resolution) == ('authors', 64)
  assert celeba.get_config('authors').resolution == 128
  with pytest.raises(ValueError, match="'author'"):
    celeba.get_config('author')


def test_authors_recipe_holds_the_authors_choices():
  """The authors' script: their networks, MSE LSGAN + contrastive + 10 L1 + 20 perceptual
  (``losses.authors_weights``), Hadsell's contrastive form, training-mode judges in G's
  loss; the paper recipe keeps the paper's choices."""
  paper, authors = celeba.get_config(), celeba.get_config('authors')
  assert losses.LossWeights.from_config(authors.loss) == losses.authors_weights()
  assert losses.LossWeights.from_config(paper.loss) == losses.paper_weights()
  assert (authors.loss.contrastive_mode, paper.loss.contrastive_mode) == ('authors', 'paper')
  assert (authors.train.g_loss_networks, paper.train.g_loss_networks) == ('train', 'eval')
  assert (authors.data.augmentation, paper.data.augmentation) == ('authors', 'shift_flip')
  # both condition G on the target image's own feature (the paper's V6, the authors' code)
  assert authors.data.target_feature == paper.data.target_feature == 'image'
  assert (authors.data.sampling, paper.data.sampling) == ('authors', 'epoch')
  assert (authors.inference.norm_statistics, paper.inference.norm_statistics) == (
    'per_image',
    'running',
  )
  assert authors.model.generator.preset == 'authors'
  assert authors.model.identity.preset == 'authors'
  train.validate_config(authors)  # every key known, every network builds


def test_bad_recipe_values_are_named():
  cfg = celeba.get_config()
  cfg.data.augmentation = 'zoom'
  with pytest.raises(ConfigError, match='data.augmentation'):
    train.validate_config(cfg)
  cfg = celeba.get_config()
  cfg.train.g_loss_networks = 'inference'
  with pytest.raises(ConfigError, match='g_loss_networks'):
    train.validate_config(cfg)
  cfg = celeba.get_config()
  cfg.data.sampling = 'uniform'
  with pytest.raises(ConfigError, match='data.sampling'):
    train.validate_config(cfg)
  cfg = celeba.get_config()
  cfg.inference.norm_statistics = 'batch'
  with pytest.raises(ConfigError, match='norm_statistics'):
    train.validate_config(cfg)
  cfg = celeba.get_config()
  cfg.data.target_feature = 'mean'
  with pytest.raises(ConfigError, match='data.target_feature'):
    train.validate_config(cfg)
