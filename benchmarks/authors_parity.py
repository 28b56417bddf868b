"""Parity check of the ``authors`` networks against the authors' own PyTorch modules.

Run by hand, with the ``arch/`` folder of a clone of the authors' repository
(github.com/kimhyeongbok/SDGAN) and PyTorch installed (requirements-convert.txt)::

  git clone https://github.com/kimhyeongbok/SDGAN /tmp/SDGAN
  PYTHONPATH=. python benchmarks/authors_parity.py --authors_arch /tmp/SDGAN/arch

Their modules are imported from that folder at run time; nothing of theirs is in this
repository. For their generator (ours: ``model.generator.preset: authors``), their
discriminator (``kind: global``) and their Siamese ResNet (``model.identity.preset:
authors``), at their shapes (128 px, 11 classes, 2048-d identity feature), it

1. builds their module with a fixed seed and ours from ``configs/celeba.py:authors``;
2. copies their tensors into our variables by the name-by-name mapping below
   (``generator_rules`` etc.). A tensor missing on either side, one left over or a shape
   that does not match is an error: this is the check that the layers agree;
3. runs both on the same inputs in float32, in two modes, and prints the largest absolute
   and relative (to the largest magnitude of theirs) difference of the output and of a
   few inner stages:

   * ``train``: batch statistics, one spectral-norm power iteration from the same vectors
     (the authors' mode in training and, since their demo never calls ``.eval()``, at
     inference); the state both update (spectral-norm vectors, running statistics) is
     compared too, the running variance after undoing the unbiased estimate PyTorch keeps
     (docs/deviations.md);
   * ``eval``: running statistics (theirs after ``--warmup`` passes in train mode), with
     every spectral-norm vector pair set to the weight's top singular pair. Flax runs one
     more power iteration at evaluation where PyTorch uses its stored vectors
     (docs/deviations.md); from the top singular pair that iteration is a fixed point, so
     the layers are compared, not the two conventions. How far the conventions differ
     with the vectors the train passes left (a few power iterations from random ones) is
     printed as a figure, not checked.

Exits 1 when a difference exceeds ``--tolerance`` (relative), 2 on a mapping error. The
measured figure is in docs/network.md; tests/test_authors_parity.py keeps the mapping
exercised without the authors' code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import pathlib
import platform
import sys
import types
from collections.abc import Iterable, Mapping

import numpy as np

# Their generator, discriminator and Siamese network, by module and class.
THEIR_MODULES = {
  'generator': ('arch_spade_feature_flex', 'Generator'),
  'discriminator': ('arch_spade_feature_flex', 'Discriminator'),
  'identity': ('arch_resnet_siam', 'ResNet'),
}
# Their constructor arguments at the shapes of their training script (train_with_feature.py:
# ch_inp_num 11 for G, 14 for D, 3 for the Siamese net; 1200 identities; 128 px).
THEIR_KWARGS = {
  'generator': dict(input_nc=11, img_size=128),
  'discriminator': dict(input_nc=14, img_size=128),
  'identity': dict(input_nc=3, num_classes=1200),
}
# Stages compared besides the output: name -> (their module, our module path).
STAGES = {
  'generator': {
    'encoder': ('conv4', ('encoder_4',)),
    'identity branch': ('encode_noise', ('identity',)),
    'fusion': ('embed', ('fuse_norm',)),
    'bottleneck': ('res4', ('bottleneck_3',)),
    'decoder': ('deconv0', ('decoder_4',)),
    'attention': ('spatialAtt', ('attention',)),
  },
  'discriminator': {
    'block 3': ('conv3', ('block3',)),
    'block 5': ('conv5', ('block5',)),
  },
  'identity': {
    'layer 2': ('layer2', ('trunk', 'layer2_1')),
    'layer 4': ('layer4', ('trunk', 'layer4_1')),
  },
}
BN_MOMENTUM = 0.1  # PyTorch's default, theirs everywhere (ours: Flax's 0.9 = 1 - 0.1)


class MappingError(ValueError):
  """Their tensors and our variables do not correspond."""


# --------------------------------------------------------------------------- the mapping


@dataclasses.dataclass(frozen=True)
class Rule:
  """One of our variables (``collection/path``) and the tensors of theirs it comes from.

  ``kind`` says how: 'conv' (OIHW -> HWIO), 'dense' ((out, in) -> (in, out)), 'copy',
  'u' (the spectral-norm vector, (out,) -> (1, out)), 'sigma' (the spectral-norm estimate
  ``u . W v`` from weight_orig, weight_u, weight_v), 'cat_conv' / 'cat_copy' (SPADE's gamma
  and beta, which we compute with one conv of both widths, gamma first).
  """

  ours: str
  theirs: tuple[str, ...]
  kind: str


class _Rules:
  """Collects rules block by block; each method spells out one layer's tensors."""

  def __init__(self):
    self.rules: list[Rule] = []

  def _add(self, ours: str, theirs: str | tuple[str, ...], kind: str):
    theirs = (theirs,) if isinstance(theirs, str) else theirs
    self.rules.append(Rule(ours, theirs, kind))

  def conv(self, ours: str, theirs: str, bias: bool = True):
    self._add(f'params/{ours}/kernel', f'{theirs}.weight', 'conv')
    if bias:
      self._add(f'params/{ours}/bias', f'{theirs}.bias', 'copy')

  def sn_conv(self, ours: str, theirs: str, bias: bool = True):
    """Our ``Conv(spectral_norm=True)`` named ``ours``; their ``spectral_norm(Conv2d)``."""
    self._add(f'params/{ours}/Conv_0/kernel', f'{theirs}.weight_orig', 'conv')
    if bias:
      self._add(f'params/{ours}/Conv_0/bias', f'{theirs}.bias', 'copy')
    state = f'batch_stats/{ours}/SpectralNorm_0/Conv_0/kernel'
    self._add(f'{state}/u', f'{theirs}.weight_u', 'u')
    self._add(
      f'{state}/sigma',
      tuple(f'{theirs}.{k}' for k in ('weight_orig', 'weight_u', 'weight_v')),
      'sigma',
    )

  def dense(self, ours: str, theirs: str):
    self._add(f'params/{ours}/kernel', f'{theirs}.weight', 'dense')
    self._add(f'params/{ours}/bias', f'{theirs}.bias', 'copy')

  def affine(self, ours: str, theirs: str):
    """An affine instance or batch norm's scale and offset."""
    self._add(f'params/{ours}/scale', f'{theirs}.weight', 'copy')
    self._add(f'params/{ours}/bias', f'{theirs}.bias', 'copy')

  def running_stats(self, ours: str, theirs: str):
    self._add(f'batch_stats/{ours}/mean', f'{theirs}.running_mean', 'copy')
    self._add(f'batch_stats/{ours}/var', f'{theirs}.running_var', 'copy')

  def spade(self, ours: str, theirs: str):
    """SPADE: the shared conv, gamma and beta (one conv of ours), the parameter-free BN."""
    self.conv(f'{ours}/shared/Conv_0', f'{theirs}.mlp_shared.0')
    self._add(
      f'params/{ours}/gamma_beta/Conv_0/kernel',
      (f'{theirs}.mlp_gamma.weight', f'{theirs}.mlp_beta.weight'),
      'cat_conv',
    )
    self._add(
      f'params/{ours}/gamma_beta/Conv_0/bias',
      (f'{theirs}.mlp_gamma.bias', f'{theirs}.mlp_beta.bias'),
      'cat_copy',
    )
    self.running_stats(f'{ours}/param_free_norm', f'{theirs}.param_free_norm')

  def spade_block(self, ours: str, theirs: str, learned_shortcut: bool):
    """SPADE ResBlk (their ``SPADEResnetBlock``)."""
    self.spade(f'{ours}/norm_0', f'{theirs}.norm_0')
    self.sn_conv(f'{ours}/conv_0', f'{theirs}.conv_0')
    self.spade(f'{ours}/norm_1', f'{theirs}.norm_1')
    self.sn_conv(f'{ours}/conv_1', f'{theirs}.conv_1')
    if learned_shortcut:
      self.spade(f'{ours}/norm_s', f'{theirs}.norm_s')
      self.sn_conv(f'{ours}/conv_s', f'{theirs}.conv_s', bias=False)

  def sk_unit(self, ours: str, theirs: str):
    """Selective-kernel unit (their ``SKUnit``: ``feas`` = conv, IN, SKConv, IN, conv, IN)."""
    self.conv(f'{ours}/reduce/Conv_0', f'{theirs}.feas.0')
    for i in range(2):  # the 3x3 and 5x5 branches: grouped conv, BN (ReLU)
      self.conv(f'{ours}/sk/branch_{i}/Conv_0', f'{theirs}.feas.2.convs.{i}.0')
      self.affine(f'{ours}/sk/branch_{i}_bn', f'{theirs}.feas.2.convs.{i}.1')
      self.running_stats(f'{ours}/sk/branch_{i}_bn', f'{theirs}.feas.2.convs.{i}.1')
    self.dense(f'{ours}/sk/squeeze', f'{theirs}.feas.2.fc')
    for i in range(2):
      self.dense(f'{ours}/sk/select_{i}', f'{theirs}.feas.2.fcs.{i}')
    self.conv(f'{ours}/expand/Conv_0', f'{theirs}.feas.4')
    self.conv(f'{ours}/shortcut/Conv_0', f'{theirs}.shortcut.0')

  def residual_block(self, ours: str, theirs: str):
    """Bottleneck residual block (their ``ResidualBlock``: ConvLayer, IN, ReLU, ConvLayer, IN)."""
    self.sn_conv(f'{ours}/conv_0', f'{theirs}.conv1.conv2d')
    self.affine(f'{ours}/norm_0', f'{theirs}.in1')
    self.sn_conv(f'{ours}/conv_1', f'{theirs}.conv2.conv2d')
    self.affine(f'{ours}/norm_1', f'{theirs}.in2')

  def basic_block(self, ours: str, theirs: str, downsample: bool):
    """ResNet BasicBlock (their ``shortcut`` Sequential is our ``downsample_*``)."""
    for k in ('1', '2'):
      self.conv(f'{ours}/conv{k}', f'{theirs}.conv{k}', bias=False)
      self.affine(f'{ours}/bn{k}', f'{theirs}.bn{k}')
      self.running_stats(f'{ours}/bn{k}', f'{theirs}.bn{k}')
    if downsample:
      self.conv(f'{ours}/downsample_conv', f'{theirs}.shortcut.0', bias=False)
      self.affine(f'{ours}/downsample_bn', f'{theirs}.shortcut.1')
      self.running_stats(f'{ours}/downsample_bn', f'{theirs}.shortcut.1')


def generator_rules() -> list[Rule]:
  """Our ``AuthorsGenerator`` <- their ``arch_spade_feature_flex.Generator`` (128 px)."""
  m = _Rules()
  m.conv('align/Conv_0', 'align_bg_conv')
  # (ours, theirs, learned shortcut: the widths differ)
  for ours, theirs, learned in (
    ('encoder_0', 'conv0', True),  # 11 -> 32
    ('encoder_1', 'conv1', True),  # 32 -> 64
    ('encoder_2', 'conv2', True),  # 64 -> 128
    ('encoder_3', 'conv3', True),  # 128 -> 256
    ('encoder_4', 'conv4', False),
  ):  # 256 -> 256
    m.spade_block(ours, theirs, learned)
  # identity branch: their encode_noise = ConvLayer, LeakyReLU, IN, SKUnit, LeakyReLU,
  # SKUnit, LeakyReLU (indices 0-6)
  m.sn_conv('identity/conv', 'encode_noise.0.conv2d')
  m.affine('identity/norm', 'encode_noise.2')
  m.sk_unit('identity/sk_0', 'encode_noise.3')
  m.sk_unit('identity/sk_1', 'encode_noise.5')
  # fusion: their embed = ConvLayer, IN
  m.sn_conv('fuse', 'embed.0.conv2d')
  m.affine('fuse_norm', 'embed.1')
  for i in range(4):
    m.residual_block(f'bottleneck_{i}', f'res{i + 1}')
  for ours, theirs, learned in (
    ('decoder_0', 'deconv4', False),  # 256 -> 256
    ('decoder_1', 'deconv3', True),  # 256 -> 128
    ('decoder_2', 'deconv2', True),  # 128 -> 64
    ('decoder_3', 'deconv1', True),  # 64 -> 32
    ('decoder_4', 'deconv0', True),
  ):  # 32 -> 16
    m.spade_block(ours, theirs, learned)
  m.conv('attention/conv/Conv_0', 'spatialAtt.conv', bias=False)
  m.conv('to_rgb/Conv_0', 'conv_end.0')
  return m.rules


def discriminator_rules() -> list[Rule]:
  """Our ``GlobalDiscriminator`` <- their ``arch_spade_feature_flex.Discriminator`` (128 px)."""
  m = _Rules()
  for i in range(1, 6):  # their ResidualBlockDown: conv_r1, conv_r2 (residual), conv_l
    m.sn_conv(f'block{i}/conv1', f'conv{i}.conv_r1.conv2d')
    m.sn_conv(f'block{i}/conv2', f'conv{i}.conv_r2.conv2d')
    m.sn_conv(f'block{i}/shortcut', f'conv{i}.conv_l.conv2d')
  m.dense('fc1/Dense_0', 'dense0')
  m.dense('fc2/Dense_0', 'dense1')
  return m.rules


def identity_rules() -> list[Rule]:
  """Our ``IdentityNet`` (preset 'authors') <- their ``arch_resnet_siam.ResNet``."""
  m = _Rules()
  m.conv('trunk/conv1', 'conv1', bias=False)
  m.affine('trunk/bn1', 'bn1')
  m.running_stats('trunk/bn1', 'bn1')
  for stage in range(1, 5):  # their num_blocks [2, 2, 2, 2(, 2 unused)]
    for j in range(2):
      m.basic_block(f'trunk/layer{stage}_{j}', f'layer{stage}.{j}', downsample=stage > 1 and j == 0)
  m.dense('hidden', 'linear1')
  m.dense('embed', 'linear2')
  return m.rules


RULES = {
  'generator': generator_rules,
  'discriminator': discriminator_rules,
  'identity': identity_rules,
}
# Their buffers with no counterpart of ours: BatchNorm's step counter (used only with
# momentum=None, which none of their norms sets).
IGNORED_SUFFIXES = ('.num_batches_tracked',)


def _sigma(weight: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """PyTorch's spectral-norm estimate from its stored vectors: ``u . (W v)``, W as (out, -1)."""
  w = weight.reshape(weight.shape[0], -1).astype(np.float64)
  return np.asarray(u.astype(np.float64) @ (w @ v.astype(np.float64)), np.float32)


def _load_one(rule: Rule, theirs: Mapping[str, np.ndarray]) -> np.ndarray:
  t = [np.asarray(theirs[k]) for k in rule.theirs]
  if rule.kind == 'conv':
    return t[0].transpose(2, 3, 1, 0)
  if rule.kind == 'dense':
    return t[0].T
  if rule.kind == 'copy':
    return t[0]
  if rule.kind == 'u':
    return t[0][None, :]
  if rule.kind == 'sigma':
    return _sigma(*t)
  if rule.kind == 'cat_conv':
    return np.concatenate([x.transpose(2, 3, 1, 0) for x in t], axis=-1)
  if rule.kind == 'cat_copy':
    return np.concatenate(t, axis=-1)
  raise ValueError(f'unknown rule kind {rule.kind!r}')


def to_ours(
  rules: Iterable[Rule], theirs: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
  """Their state dict (name -> array) as our flat variables (``collection/path`` -> array).

  ``shapes`` are our variables' shapes (flat, as ``flat_shapes`` gives them). Raises
  ``MappingError`` naming every tensor of theirs that is missing, left over or of a shape
  that does not map onto ours, and every variable of ours that no rule fills.
  """
  rules = list(rules)
  problems = []
  ours = {}
  for rule in rules:
    missing = [k for k in rule.theirs if k not in theirs]
    if missing:
      problems.append(f'their state has no {", ".join(missing)} (for our {rule.ours})')
      continue
    if rule.ours not in shapes:
      problems.append(f'our variables have no {rule.ours} (for their {rule.theirs[0]})')
      continue
    try:
      value = _load_one(rule, theirs)
    except ValueError as e:  # e.g. gamma and beta convs of different kernel sizes
      problems.append(f'their {", ".join(rule.theirs)} do not combine into our {rule.ours}: {e}')
      continue
    if value.shape != tuple(shapes[rule.ours]):
      got = ', '.join(f'{k} {tuple(np.shape(theirs[k]))}' for k in rule.theirs)
      problems.append(
        f'shape mismatch: their {got} gives {value.shape} ({rule.kind}), '
        f'our {rule.ours} is {tuple(shapes[rule.ours])}'
      )
      continue
    ours[rule.ours] = value.astype(np.float32)
  used = {k for rule in rules for k in rule.theirs}
  left = sorted(k for k in theirs if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if left:
    problems.append(f'their tensors with no place in ours: {", ".join(left)}')
  unfilled = sorted(set(shapes) - {rule.ours for rule in rules})
  if unfilled:
    problems.append(f'our variables that no rule fills: {", ".join(unfilled)}')
  if problems:
    raise MappingError('their network and ours do not correspond:\n  ' + '\n  '.join(problems))
  return ours


def to_theirs(rules: Iterable[Rule], ours: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat variables as a state dict of theirs: ``to_ours``' inverse.

  Their ``weight_v`` is not one of our variables: it is written as the vector their power
  iteration computes from ``weight_u``, ``normalize(W^T u)``, so that ``to_ours`` gives
  back as sigma ``|W^T u|``, not our stored sigma.
  """
  theirs = {}
  for rule in rules:
    value = np.asarray(ours[rule.ours])
    if rule.kind == 'conv':
      theirs[rule.theirs[0]] = value.transpose(3, 2, 0, 1)
    elif rule.kind == 'dense':
      theirs[rule.theirs[0]] = value.T
    elif rule.kind == 'copy':
      theirs[rule.theirs[0]] = value
    elif rule.kind == 'u':
      theirs[rule.theirs[0]] = value[0]
    elif rule.kind == 'sigma':
      kernel = np.asarray(
        ours[
          rule.ours.replace('batch_stats/', 'params/', 1)
          .replace('/SpectralNorm_0', '', 1)
          .removesuffix('/sigma')
        ]
      )
      u = np.asarray(ours[rule.ours.removesuffix('sigma') + 'u'])[0]
      w = kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)
      v = w.T @ u
      theirs[rule.theirs[2]] = v / max(np.linalg.norm(v), 1e-12)
    elif rule.kind in ('cat_conv', 'cat_copy'):
      half = value.shape[-1] // 2
      for key, part in zip(rule.theirs, (value[..., :half], value[..., half:])):
        theirs[key] = part.transpose(3, 2, 0, 1) if rule.kind == 'cat_conv' else part
    else:
      raise ValueError(f'unknown rule kind {rule.kind!r}')
  return theirs


def flat_shapes(variables) -> dict[str, tuple[int, ...]]:
  """``collection/path`` -> shape of a (possibly abstract) variable tree."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  return {
    k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(variables), sep='/').items()
  }


def flat_values(tree) -> dict[str, np.ndarray]:
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep='/').items()}


def unflatten(flat: Mapping[str, np.ndarray]):
  """Our flat variables as the nested tree ``apply`` takes.

  Flax's ``SpectralNorm`` names its state with slashes (``Conv_0/kernel/u``, one name
  inside the ``SpectralNorm_0`` scope), so everything after that scope stays one key.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  nested = {}
  for key, value in flat.items():
    parts = key.split('/')
    if 'SpectralNorm_0' in parts:
      i = parts.index('SpectralNorm_0')
      parts = parts[: i + 1] + ['/'.join(parts[i + 1 :])]
    nested[tuple(parts)] = jnp.asarray(value)
  return traverse_util.unflatten_dict(nested)


# ------------------------------------------------------------------- our networks, inputs


@dataclasses.dataclass
class Inputs:
  """The fixed inputs, NHWC float32 (ours); ``nchw`` gives theirs."""

  image: np.ndarray  # [B, 128, 128, 3] in [0, 1]
  mask: np.ndarray  # [B, 128, 128, 1], 1 on the face
  semantic: np.ndarray  # [B, 128, 128, 11] one-hot
  identity: np.ndarray  # [B, 2048], non-negative like a ResNet-50 average-pool feature

  @property
  def masked(self) -> np.ndarray:
    return self.image * (1 - self.mask)


def make_inputs(
  batch: int, seed: int, size: int = 128, classes: int = 11, identity_dim: int = 2048
) -> Inputs:
  """Random image, an elliptical face mask, a blocky map (8-px cells) and a feature."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  yy, xx = np.mgrid[:size, :size] / size
  mask = ((yy - 0.55) ** 2 / 0.35**2 + (xx - 0.5) ** 2 / 0.28**2 <= 1).astype(np.float32)
  mask = np.broadcast_to(mask[None, :, :, None], (batch, size, size, 1)).copy()
  cells = rng.integers(0, classes, (batch, size // 8, size // 8))
  labels = np.kron(cells, np.ones((8, 8), int))
  semantic = np.eye(classes, dtype=np.float32)[labels]
  identity = np.abs(rng.normal(size=(batch, identity_dim))).astype(np.float32)
  return Inputs(image, mask, semantic, identity)


def nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def our_networks():
  """Our three networks as ``configs/celeba.py:authors`` at the authors' shapes build them."""
  from sdgan_jax.configs import celeba  # pylint: disable=import-outside-toplevel
  from sdgan_jax.networks import Networks  # pylint: disable=import-outside-toplevel
  from sdgan_jax.perf import benchmarking  # pylint: disable=import-outside-toplevel

  config = benchmarking.authors_shapes_config(celeba.get_config('authors'))
  config.dtype = 'float32'  # the comparison is in float32 whatever the recipe's default
  nets = Networks(config)
  return {
    'generator': nets.generator,
    'discriminator': nets.discriminator,
    'identity': nets.identity,
  }


def our_args(name: str, inputs: Inputs) -> tuple:
  if name == 'generator':
    return (inputs.masked, inputs.semantic, inputs.identity)
  if name == 'discriminator':
    return (inputs.image, inputs.semantic)
  return (inputs.image,)


def our_shapes(module, args) -> dict[str, tuple[int, ...]]:
  import jax  # pylint: disable=import-outside-toplevel

  return flat_shapes(jax.eval_shape(module.init, jax.random.key(0), *args))


def run_ours(module, flat_variables, args, train: bool, stages: Mapping):
  """Output, stages (NHWC) and, in train mode, the updated flat state of our module."""
  import jax  # pylint: disable=import-outside-toplevel

  wanted = {path for _, path in stages.values()}
  out, state = module.apply(
    unflatten(flat_variables),
    *args,
    train=train,
    mutable=['batch_stats', 'intermediates'],
    capture_intermediates=lambda mdl, method: method == '__call__' and mdl.path in wanted,
  )
  if isinstance(out, dict):  # the identity net's
    out = out['embedding']
  found = {}
  for name, (_, path) in stages.items():
    node = state['intermediates']
    for key in path:
      node = node[key]
    found[name] = np.asarray(node['__call__'][0])
  new_state = {}
  if train:
    new_state = {
      f'batch_stats/{k}': np.asarray(v) for k, v in flat_values(state['batch_stats']).items()
    }
  return np.asarray(jax.device_get(out)), found, new_state


# ------------------------------------------------------------------------ their networks


def import_theirs(arch_dir: str | pathlib.Path) -> dict[str, type]:
  """Their network classes, imported from ``arch_dir`` (the ``arch/`` of their clone)."""
  arch_dir = pathlib.Path(arch_dir).expanduser().resolve()
  wanted = sorted({f'{module}.py' for module, _ in THEIR_MODULES.values()})
  if arch_dir.name != 'arch' or not all((arch_dir / f).is_file() for f in wanted):
    raise SystemExit(
      f'authors_parity.py: error: --authors_arch {arch_dir} is not the arch/ folder of a '
      f'clone of github.com/kimhyeongbok/SDGAN (it must be named arch and hold '
      f'{", ".join(wanted)}); run git clone https://github.com/kimhyeongbok/SDGAN and '
      'pass its arch/'
    )
  if importlib.util.find_spec('torchvision') is None:
    # Their architecture.py imports torchvision for a VGG-19 (perceptual loss) that none
    # of the three networks builds; an empty module lets it import without one.
    print(
      'note: torchvision is not installed; an empty stand-in lets their '
      'architecture.py import (its VGG-19 is not used here)'
    )
    sys.modules['torchvision'] = types.ModuleType('torchvision')
  # Their modules import each other as ``arch.*``: the clone's root goes on the path for
  # the import only, so that its other top-level files cannot shadow anything later.
  sys.path.insert(0, str(arch_dir.parent))
  try:
    return {
      name: getattr(importlib.import_module(f'arch.{module}'), cls)
      for name, (module, cls) in THEIR_MODULES.items()
    }
  finally:
    sys.path.remove(str(arch_dir.parent))


def their_args(name: str, inputs: Inputs) -> tuple:
  """Their forward's arguments, NCHW: G(seg, bg, feature), D(cat(image, seg)), S(image)."""
  import torch  # pylint: disable=import-outside-toplevel

  t = lambda x: torch.from_numpy(nchw(x))
  if name == 'generator':
    return (t(inputs.semantic), t(inputs.masked), torch.from_numpy(inputs.identity))
  if name == 'discriminator':
    return (torch.cat([t(inputs.image), t(inputs.semantic)], 1),)
  return (t(inputs.image),)


def their_state(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def run_theirs(model, args, train: bool, stages: Mapping):
  """Output and stages (NHWC) of their module, and the element count per channel that
  each batch norm of theirs normalised over (for its unbiased running variance)."""
  import torch  # pylint: disable=import-outside-toplevel

  found, counts, hooks = {}, {}, []

  def keep(name):
    return lambda mod, inp, out: found.__setitem__(name, out.detach().numpy().copy())

  def count(name):
    return lambda mod, inp, out: counts.__setitem__(name, inp[0].numel() // inp[0].shape[1])

  for name, (theirs, _) in stages.items():
    hooks.append(model.get_submodule(theirs).register_forward_hook(keep(name)))
  for name, mod in model.named_modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      hooks.append(mod.register_forward_hook(count(name)))
  model.train(train)
  try:
    with torch.no_grad():
      out = model(*args)
  finally:
    for hook in hooks:
      hook.remove()
  to_nhwc = lambda x: x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
  return (to_nhwc(out.detach().numpy()), {k: to_nhwc(v) for k, v in found.items()}, counts)


def set_top_singular_pairs(model) -> int:
  """Sets every spectral-norm ``weight_u``, ``weight_v`` of ``model`` to its weight's top
  singular pair, where a power iteration stands still; returns how many."""
  import torch  # pylint: disable=import-outside-toplevel

  n = 0
  with torch.no_grad():
    for mod in model.modules():
      if hasattr(mod, 'weight_orig') and hasattr(mod, 'weight_u'):
        w = mod.weight_orig.detach().double().reshape(mod.weight_orig.shape[0], -1)
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        mod.weight_u.copy_(u[:, 0].float())
        mod.weight_v.copy_(vh[0].float())
        n += 1
  return n


# -------------------------------------------------------------------------- comparison


def difference(
  ours: np.ndarray, theirs: np.ndarray, scale: np.ndarray | None = None
) -> tuple[float, float]:
  """(max |ours - theirs|, max of that divided by ``scale``), ``scale`` by default
  max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    raise MappingError(f'outputs of different shapes: ours {ours.shape}, theirs {theirs.shape}')
  err = np.abs(ours - theirs)
  if scale is None:
    scale = np.max(np.abs(theirs))
  return float(np.max(err)), float(np.max(err / np.maximum(scale, 1e-30)))


def state_differences(
  rules: Iterable[Rule],
  before: Mapping[str, np.ndarray],
  after: Mapping[str, np.ndarray],
  ours_after: Mapping[str, np.ndarray],
  counts: Mapping[str, int],
) -> dict[str, tuple[float, float]]:
  """Worst difference per kind of state between ours and theirs after one train pass.

  ``before``/``after``: their state dict around the pass; ``counts``: per batch norm of
  theirs, the elements per channel it normalised. Their running variance mixes in the
  unbiased batch variance (n / (n - 1) times the biased one ours mixes in): 'running var'
  compares ours with theirs with that factor undone, 'running var as stored' without. A
  running mean's difference is relative to the channel's running standard deviation, the
  size that matters to the normalised output (a mean can be 0 to rounding: behind an
  instance norm, the bottleneck's).
  """
  worst: dict[str, tuple[float, float]] = {}

  def note(kind, ours, theirs, scale=None):
    a, r = difference(ours, theirs, scale)
    worst[kind] = max(worst.get(kind, (0.0, 0.0)), (a, r), key=lambda x: x[1])

  after_ours = to_ours_subset(rules, after)
  for rule in rules:
    if not rule.ours.startswith('batch_stats/'):
      continue
    got = ours_after[rule.ours]
    if rule.kind == 'u':
      note('spectral-norm u', got, after_ours[rule.ours])
    elif rule.kind == 'sigma':
      note('spectral-norm sigma', got, after_ours[rule.ours])
    elif rule.ours.endswith('/mean'):
      var = after[rule.theirs[0].removesuffix('_mean') + '_var']
      note('running mean', got, after_ours[rule.ours], np.sqrt(var))
    elif rule.ours.endswith('/var'):
      key = rule.theirs[0]
      n = counts[key.removesuffix('.running_var')]
      kept = (1 - BN_MOMENTUM) * before[key]
      note('running var', got, kept + (after[key] - kept) * (n - 1) / n)
      note('running var as stored', got, after[key])
  return worst


def to_ours_subset(rules: Iterable[Rule], theirs: Mapping[str, np.ndarray]):
  """``to_ours`` without the shape and coverage checks (for state already checked)."""
  return {rule.ours: _load_one(rule, theirs) for rule in rules}


@dataclasses.dataclass
class Row:
  network: str
  mode: str
  what: str
  abs_err: float
  rel_err: float
  checked: bool = True


def check_network(
  name: str, their_cls, our_module, inputs: Inputs, warmup_inputs: list, seed: int
) -> tuple[list[Row], dict]:
  """Compares one network of theirs with ours in train and eval mode (module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models.layers import count_params  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  model = their_cls(**THEIR_KWARGS[name]).float()
  rules, stages = RULES[name](), STAGES[name]
  args = our_args(name, inputs)
  shapes = our_shapes(our_module, args)
  counts = {
    'theirs': sum(p.numel() for p in model.parameters()),
    'ours': count_params(unflatten({k: np.zeros(s, np.float32) for k, s in shapes.items()})),
  }
  rows = []

  def compare(mode, ours, theirs, checked=True, prefix=''):
    (o_out, o_stages), (t_out, t_stages) = ours, theirs
    for stage in stages:
      rows.append(
        Row(name, mode, f'{prefix}{stage}', *difference(o_stages[stage], t_stages[stage]), checked)
      )
    rows.append(Row(name, mode, f'{prefix}output', *difference(o_out, t_out), checked))

  # train mode, from the state as built: both take batch statistics and one power
  # iteration from the same spectral-norm vectors, and update their state.
  before = their_state(model)
  variables = to_ours(rules, before, shapes)
  t_out, t_stages, bn_counts = run_theirs(model, their_args(name, inputs), True, stages)
  o_out, o_stages, o_state = run_ours(our_module, variables, args, True, stages)
  compare('train', (o_out, o_stages), (t_out, t_stages))
  for kind, (a, r) in state_differences(
    rules, before, their_state(model), o_state, bn_counts
  ).items():
    rows.append(Row(name, 'train', f'state: {kind}', a, r, kind != 'running var as stored'))

  # eval mode: running statistics of a few more train passes of theirs.
  for extra in warmup_inputs:
    run_theirs(model, their_args(name, extra), True, {})
  variables = to_ours(rules, their_state(model), shapes)
  if any(r.kind == 'u' for r in rules):
    # the two evaluation conventions with their vectors as the passes left them: a figure
    t_eval = run_theirs(model, their_args(name, inputs), False, stages)[:2]
    compare(
      'eval',
      run_ours(our_module, variables, args, False, stages)[:2],
      t_eval,
      checked=False,
      prefix='power-iteration vectors as left: ',
    )
    set_top_singular_pairs(model)
    variables = to_ours(rules, their_state(model), shapes)
  t_eval = run_theirs(model, their_args(name, inputs), False, stages)[:2]
  compare('eval', run_ours(our_module, variables, args, False, stages)[:2], t_eval)
  return rows, counts


def machine() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  except OSError:
    pass
  return (
    f'{cpu}; JAX {jax.__version__} on {jax.default_backend()}, PyTorch {torch.__version__} on CPU'
  )


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='authors_parity.py',
    description="Compares the authors' networks (preset authors) with their PyTorch "
    'modules on the same weights and inputs (docs/network.md).',
  )
  parser.add_argument(
    '--authors_arch',
    required=True,
    help='the arch/ folder of a clone of github.com/kimhyeongbok/SDGAN',
  )
  parser.add_argument(
    '--networks',
    default='generator,discriminator,identity',
    help='comma-separated subset of generator, discriminator, identity',
  )
  parser.add_argument('--batch', type=int, default=2, help='batch size (2-4 is plenty)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--warmup',
    type=int,
    default=2,
    help='train passes of theirs on other inputs before the eval check, '
    'so that the running statistics are not the initial ones',
  )
  parser.add_argument(
    '--tolerance',
    type=float,
    default=1e-4,
    help='largest relative difference (to max |theirs|) that passes',
  )
  parser.add_argument(
    '--print_mapping', action='store_true', help='print every rule (ours <- theirs) and exit'
  )
  args = parser.parse_args(argv)
  args.networks = [n.strip() for n in args.networks.split(',') if n.strip()]
  unknown = sorted(set(args.networks) - set(RULES))
  if unknown or not args.networks:
    parser.error(
      f'--networks: unknown {", ".join(unknown) or "(none given)"}; choose from {", ".join(RULES)}'
    )
  if args.batch < 2:
    parser.error(
      '--batch must be at least 2: batch statistics of one image are its '
      'instance statistics, which hides a batch-norm mix-up'
    )
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.print_mapping:
    for name in args.networks:
      for rule in RULES[name]():
        print(f'{name}: {rule.ours} <- {" + ".join(rule.theirs)} ({rule.kind})')
    return 0
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  # fp32 throughout: no reduced-precision matmuls on either side.
  jax.config.update('jax_default_matmul_precision', 'highest')
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  classes = import_theirs(args.authors_arch)
  ours = our_networks()
  inputs = make_inputs(args.batch, args.seed)
  warmup = [make_inputs(args.batch, args.seed + 1 + i) for i in range(args.warmup)]
  print(f'{datetime.date.today()}, {machine()}')
  print(
    f'inputs: batch {args.batch}, 128 px, 11 classes, 2048-d identity; seed {args.seed}; '
    f'tolerance {args.tolerance:g} relative\n'
  )
  rows = []
  try:
    for name in args.networks:
      network_rows, counts = check_network(
        name, classes[name], ours[name], inputs, warmup, args.seed
      )
      rows += network_rows
      print(
        f'{name}: {counts["ours"]:,} parameters (ours), {counts["theirs"]:,} (theirs); '
        f'{len(RULES[name]())} mapped variables'
      )
  except MappingError as e:
    print(f'authors_parity.py: error: {e}', file=sys.stderr)
    return 2
  print(f'\n{"network":<14}{"mode":<6}{"what":<58}{"max abs":>11}{"max rel":>11}')
  failed = []
  for row in rows:
    flag = '' if not row.checked else (' FAIL' if row.rel_err > args.tolerance else '')
    print(
      f'{row.network:<14}{row.mode:<6}{row.what:<58}{row.abs_err:>11.2e}'
      f'{row.rel_err:>11.2e}{flag}{"" if row.checked else "  (figure)"}'
    )
    if flag:
      failed.append(row)
  worst = max((r for r in rows if r.checked), key=lambda r: r.rel_err)
  print(
    f'\nworst checked: {worst.network} {worst.mode} {worst.what}: {worst.abs_err:.2e} '
    f'abs, {worst.rel_err:.2e} rel'
  )
  if failed:
    print(f'{len(failed)} differences above {args.tolerance:g}', file=sys.stderr)
    return 1
  print('parity: OK')
  return 0


if __name__ == '__main__':
  sys.exit(main())
