"""benchmarks/authors_parity.py without the authors' code: its weight mapping covers our
`authors` networks and round-trips, its layer rules agree with PyTorch's own layers, and
its errors name what is wrong. The comparison with their modules is run by hand
(docs/network.md)."""

import functools
import importlib.util
import pathlib
import sys
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'authors_parity.py'


@pytest.fixture(scope='module')
def parity():
  spec = importlib.util.spec_from_file_location('authors_parity', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  yield module
  del sys.modules[spec.name]


@pytest.fixture(scope='module')
def shapes(parity):
  """Our three networks' variable shapes (abstract: nothing is computed)."""
  inputs = parity.make_inputs(2, 0)
  return {
    name: parity.our_shapes(module, parity.our_args(name, inputs))
    for name, module in parity.our_networks().items()
  }


@pytest.mark.parametrize('name', ['generator', 'discriminator', 'identity'])
def test_mapping_covers_our_variables_and_round_trips(parity, shapes, name):
  rules = parity.RULES[name]()
  rng = np.random.default_rng(0)
  ours = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes[name].items()}
  theirs = parity.to_theirs(rules, ours)
  # every tensor of theirs is (out, in, kh, kw) where ours is (kh, kw, in, out)
  assert all(v.ndim in (1, 2, 4) for v in theirs.values())
  back = parity.to_ours(rules, theirs, shapes[name])  # raises on any unmatched variable
  assert back.keys() == ours.keys()
  for key, value in ours.items():
    if key.endswith('/sigma'):
      # sigma is recomputed from their vectors: with v = W^T u / |W^T u|, u . W v = |W^T u|
      kernel = ours[
        key.replace('batch_stats/', 'params/', 1)
        .replace('/SpectralNorm_0', '')
        .removesuffix('/sigma')
      ]
      u = ours[key.removesuffix('sigma') + 'u']
      want = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]) @ u[0])
      np.testing.assert_allclose(back[key], want, rtol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_mapping_errors_name_the_tensor(parity, shapes):
  rules = parity.discriminator_rules()
  ours = {k: np.zeros(s, np.float32) for k, s in shapes['discriminator'].items()}
  theirs = parity.to_theirs(rules, ours)
  theirs['conv1.conv_r1.conv2d.num_batches_tracked'] = np.zeros(())  # ignored, as in torch
  parity.to_ours(rules, theirs, shapes['discriminator'])

  missing = dict(theirs)
  del missing['dense0.bias']
  with pytest.raises(parity.MappingError, match=r'no dense0\.bias \(for our params/fc1'):
    parity.to_ours(rules, missing, shapes['discriminator'])

  wrong = dict(theirs, **{'conv2.conv_l.conv2d.weight_orig': np.zeros((128, 64, 3, 3))})
  with pytest.raises(
    parity.MappingError,
    match=r'shape mismatch: their conv2\.conv_l\.conv2d\.weight_orig '
    r'\(128, 64, 3, 3\) gives \(3, 3, 64, 128\).*is \(1, 1, 64, 128\)',
  ):
    parity.to_ours(rules, wrong, shapes['discriminator'])

  extra = dict(theirs, **{'conv6.conv_l.conv2d.bias': np.zeros(8)})
  with pytest.raises(parity.MappingError, match=r'no place in ours: conv6\.conv_l'):
    parity.to_ours(rules, extra, shapes['discriminator'])

  with pytest.raises(parity.MappingError, match=r'no rule fills: params/fc2/Dense_0/bias'):
    parity.to_ours(
      [r for r in rules if r.ours != 'params/fc2/Dense_0/bias'], theirs, shapes['discriminator']
    )


class _Named(nn.Module):
  """One layer of ours (``make(name=...)`` builds it) named 'c', as inside a network."""

  make: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, *args, train=False):
    return self.make(name='c')(*args, train=train)


def test_spectral_norm_conv_rule_agrees_with_torch(parity):
  """The rule against PyTorch's own conv and spectral norm (not the authors' code): the
  kernel layout, the power iteration's vector in training and sigma at evaluation."""
  import torch  # pylint: disable=import-outside-toplevel  (requirements-convert.txt)

  from sdgan_jax.models.layers import Conv  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  theirs = torch.nn.ModuleDict(
    {'c': torch.nn.utils.spectral_norm(torch.nn.Conv2d(5, 7, 3, padding=1))}
  )
  m = parity._Rules()  # pylint: disable=protected-access
  m.sn_conv('c', 'c')
  ours = _Named(functools.partial(Conv, 7, 3, spectral_norm=True))
  x = np.random.default_rng(1).normal(size=(2, 9, 9, 5)).astype(np.float32)
  shapes = parity.our_shapes(ours, (x,))

  def run_both(train):
    variables = parity.unflatten(parity.to_ours(m.rules, parity.their_state(theirs), shapes))
    theirs.train(train)
    with torch.no_grad():
      want = theirs['c'](torch.from_numpy(parity.nchw(x))).numpy().transpose(0, 2, 3, 1)
    got, state = ours.apply(variables, jnp.asarray(x), train=train, mutable=['batch_stats'])
    return np.asarray(got), want, state

  got, want, state = run_both(train=True)  # one power iteration from the same u
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    state['batch_stats']['c']['SpectralNorm_0']['Conv_0/kernel/u'][0],
    theirs['c'].weight_u.numpy(),
    rtol=1e-5,
    atol=1e-6,
  )
  assert parity.set_top_singular_pairs(theirs) == 1
  got, want, _ = run_both(train=False)  # their stored vectors; our extra iteration
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_spade_rule_puts_gamma_first(parity):
  """Their gamma and beta convs land in our fused conv as gamma, beta: with gamma's bias 1
  and beta's 0 (weights 0) SPADE doubles the normalised input; swapped it would add 1."""
  from sdgan_jax.models.spade import SPADE  # pylint: disable=import-outside-toplevel

  m = parity._Rules()  # pylint: disable=protected-access
  m.spade('c', 'n')
  ours = _Named(functools.partial(SPADE, hidden=4, norm='batch'))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  semantic = np.eye(5, dtype=np.float32)[rng.integers(0, 5, (2, 4, 4))]
  theirs = {
    'n.mlp_shared.0.weight': rng.normal(size=(4, 5, 3, 3)),
    'n.mlp_shared.0.bias': np.ones(4),
    'n.mlp_gamma.weight': np.zeros((3, 4, 3, 3)),
    'n.mlp_gamma.bias': np.ones(3),
    'n.mlp_beta.weight': np.zeros((3, 4, 3, 3)),
    'n.mlp_beta.bias': np.zeros(3),
    'n.param_free_norm.running_mean': np.array([0.5, -1.0, 2.0]),
    'n.param_free_norm.running_var': np.array([4.0, 1.0, 0.25]),
  }
  variables = parity.unflatten(
    parity.to_ours(m.rules, theirs, parity.our_shapes(ours, (x, semantic)))
  )
  got = ours.apply(variables, jnp.asarray(x), jnp.asarray(semantic))
  normalised = (x - theirs['n.param_free_norm.running_mean']) / np.sqrt(
    theirs['n.param_free_norm.running_var'] + 1e-5
  )
  np.testing.assert_allclose(got, 2 * normalised, rtol=1e-5, atol=1e-5)


def test_cli_rejects_a_folder_that_is_not_their_arch(parity, tmp_path):
  with pytest.raises(SystemExit, match=r'is not the arch/ folder .*arch_spade_feature_flex'):
    parity.main(['--authors_arch', str(tmp_path)])
  with pytest.raises(SystemExit):
    parity.parse_args(['--authors_arch', str(tmp_path), '--batch', '1'])
  with pytest.raises(SystemExit):
    parity.parse_args(['--authors_arch', str(tmp_path), '--networks', 'vgg'])


def test_state_differences_undo_the_unbiased_running_variance(parity):
  """One train pass from var 1: theirs keeps 0.9 + 0.1 * n/(n-1) * s2, ours 0.9 + 0.1 * s2;
  with n/(n-1) undone they agree, as stored they differ by 0.1 * s2 / (n-1). A mean's
  difference counts in running standard deviations."""
  m = parity._Rules()  # pylint: disable=protected-access
  m.running_stats('bn', 'bn')
  n, s2 = 5, 2.0
  var_theirs = 0.9 + 0.1 * s2 * n / (n - 1)
  before = {'bn.running_mean': np.zeros(1), 'bn.running_var': np.ones(1)}
  after = {'bn.running_mean': np.full(1, 0.3), 'bn.running_var': np.full(1, var_theirs)}
  ours = {'batch_stats/bn/mean': np.full(1, 0.31), 'batch_stats/bn/var': np.full(1, 0.9 + 0.1 * s2)}
  worst = parity.state_differences(m.rules, before, after, ours, {'bn': n})
  assert worst['running mean'][1] == pytest.approx(0.01 / np.sqrt(var_theirs))
  assert worst['running var'][0] == pytest.approx(0, abs=1e-12)
  assert worst['running var as stored'][0] == pytest.approx(0.1 * s2 / (n - 1))
