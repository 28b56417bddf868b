"""SPADE and the SDGAN generators (paper §3.4): shapes, parameter counts, FLOPs, the
authors' layout, gradients, options."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sdgan_jax.configs import celeba, demo
from sdgan_jax.models import generator as gen_lib
from sdgan_jax.models.authors_generator import AuthorsGenerator
from sdgan_jax.models.generator import PAPER, Generator, composite, generator_from_config
from sdgan_jax.models.layers import count_params
from sdgan_jax.models.spade import SPADE
from sdgan_jax.perf import flops as flops_lib

NUM_CLASSES = 11

# Narrow version of the paper preset: same topology, small enough to run on a CPU quickly.
SMALL = dict(
  PAPER,
  stem_features=8,
  encoder_features=(8, 16, 16, 16),
  bottleneck_features=16,
  bottleneck_blocks=2,
  decoder_features=(16, 16, 8, 8),
  spade_hidden=8,
)
# Narrow version of the authors' network: same layout (SK widths divisible by 8 groups).
SMALL_AUTHORS = dict(
  encoder_features=(8, 8, 16, 16, 16),
  identity_features=(8, 16, 32),
  bottleneck_features=16,
  bottleneck_blocks=1,
  decoder_features=(16, 16, 8, 8, 8),
  spade_hidden=8,
)


def _init(model, *args):
  return jax.jit(model.init)(jax.random.key(0), *args)


def _apply(model, variables, *args, **kwargs):
  """Jitted apply: one compiled program instead of hundreds of eagerly dispatched ops."""
  return jax.jit(lambda v, *a: model.apply(v, *a, **kwargs))(variables, *args)


def _inputs(res, identity_dim, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(batch, res, res, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(batch, res, res))
  semantic = jax.nn.one_hot(labels, NUM_CLASSES)
  identity = rng.normal(size=(batch, identity_dim)).astype(np.float32)
  return jnp.asarray(image), semantic, jnp.asarray(identity)


# --- parameter counts derived by hand from the layer list of paper §3.4 -------------------


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _spade(c, hidden=128, label=NUM_CLASSES):
  return _conv(3, label, hidden) + _conv(3, hidden, 2 * c)  # shared conv, gamma and beta


def _spade_block(fin, fout):
  fmid = min(fin, fout)
  n = _spade(fin) + _conv(3, fin, fmid) + _spade(fmid) + _conv(3, fmid, fout)
  if fin != fout:
    n += _spade(fin) + _conv(1, fin, fout, bias=False)
  return n


def _residual_block(c):
  return 2 * (_conv(3, c, c) + 2 * c)  # two convs, two affine instance norms


def _paper_generator_params(identity_dim, grid):
  n = _conv(3, 3, 32)
  for fin, fout in [(32, 64), (64, 128), (128, 256), (256, 256)]:
    n += _spade_block(fin, fout)
  n += _conv(3, 256 + identity_dim // grid**2, 256) + 2 * 256  # fusion conv + its norm
  n += 4 * _residual_block(256)
  for fin, fout in [(256, 256), (256, 128), (128, 64), (64, 32)]:
    n += _spade_block(fin, fout)
  return n + _conv(3, 32, 3)


@pytest.mark.parametrize('res,identity_dim', [(128, 2048), (128, 512), (64, 128), (64, 2048)])
def test_paper_generator_parameter_count_matches_hand_derivation(res, identity_dim):
  args = _inputs(res, identity_dim, batch=1)
  variables = jax.eval_shape(lambda: Generator(**PAPER).init(jax.random.key(0), *args))
  grid = res // 16
  assert count_params(variables) == _paper_generator_params(identity_dim, grid)


def _sk_conv(f, groups=8):
  d = max(f // 2, 32)
  branches = sum(k * k * (f // groups) * f + f + 2 * f for k in (3, 5))  # conv + batch norm
  return branches + (f * d + d) + 2 * (d * f + f)


def _sk_unit(fin, fout):
  mid = fout // 2
  n = _conv(1, fin, mid) + _sk_conv(mid) + _conv(1, mid, fout)
  return n + (_conv(1, fin, fout) if fin != fout else 0)


def _authors_generator_params():
  """The authors' generator at 128 px, layer by layer (authors_generator.py docstring)."""
  n = _conv(3, 3, NUM_CLASSES)
  for fin, fout in [(11, 32), (32, 64), (64, 128), (128, 256), (256, 256)]:
    n += _spade_block(fin, fout)
  n += _conv(3, 32, 64) + 2 * 64 + _sk_unit(64, 128) + _sk_unit(128, 256)
  n += _conv(3, 512, 256) + 2 * 256 + 4 * _residual_block(256)
  for fin, fout in [(256, 256), (256, 128), (128, 64), (64, 32), (32, 16)]:
    n += _spade_block(fin, fout)
  return n + _conv(3, 2, 1, bias=False) + _conv(3, 16, 3)


def _authors_variables(res=128, identity_dim=2048, **kwargs):
  model = AuthorsGenerator(**kwargs)
  args = _inputs(res, identity_dim, batch=1)
  return model, args, jax.eval_shape(lambda: model.init(jax.random.key(0), *args))


def test_authors_generator_size_and_flops_match_their_figures():
  """16.88 M parameters and 41.2 GFLOP per 128-px image forward (2 FLOP per multiply-add,
  convs and dense layers, as ``perf.flops.network_flops`` counts)."""
  model, args, variables = _authors_variables()
  assert count_params(variables) == _authors_generator_params() == 16_880_743
  assert abs(count_params(variables) - 16.88e6) / 16.88e6 < 0.02
  forward = lambda v, *a: model.apply(v, *a)
  args2 = _inputs(128, 2048, batch=2)
  flops = flops_lib.conv_dense_flops(forward, variables, *args2) - flops_lib.conv_dense_flops(
    forward, variables, *args
  )
  assert abs(flops / 1e9 - 41.2) / 41.2 < 0.02, flops / 1e9


def test_authors_generator_layout():
  """Feature sizes and widths block by block, the identity branch's SK units (kernels 3 and
  5, 8 groups), the 3x3 spatial attention and where spectral / batch norm sit."""
  model, args, variables = _authors_variables()
  _, inter = jax.eval_shape(
    lambda v: model.apply(v, *args, capture_intermediates=True, mutable=['intermediates']),
    variables,
  )
  shape = lambda name: inter['intermediates'][name]['__call__'][0].shape[1:]
  assert shape('align') == (128, 128, 11)
  # block outputs before the pool that follows blocks 1-4: 128 -> 8 px
  assert [shape(f'encoder_{i}') for i in range(5)] == [
    (128, 128, 32),
    (128, 128, 64),
    (64, 64, 128),
    (32, 32, 256),
    (16, 16, 256),
  ]
  assert shape('identity') == (8, 8, 256) and shape('fuse') == (8, 8, 256)
  assert [shape(f'bottleneck_{i}') for i in range(4)] == [(8, 8, 256)] * 4
  # upsampling before decoder blocks 0-2, none before 3 and 4, one after 4
  assert [shape(f'decoder_{i}') for i in range(5)] == [
    (16, 16, 256),
    (32, 32, 128),
    (64, 64, 64),
    (64, 64, 32),
    (64, 64, 16),
  ]
  assert shape('attention') == (128, 128, 16)
  identity = inter['intermediates']['identity']
  assert [identity[k]['__call__'][0].shape[-1] for k in ('conv', 'sk_0', 'sk_1')] == [64, 128, 256]

  params = variables['params']
  assert params['attention']['conv']['Conv_0'] == {
    'kernel': jax.ShapeDtypeStruct((3, 3, 2, 1), jnp.float32)
  }  # 3x3, no bias
  for unit, mid, d in (('sk_0', 64, 32), ('sk_1', 128, 64)):
    sk = params['identity'][unit]['sk']
    assert sk['branch_0']['Conv_0']['kernel'].shape == (3, 3, mid // 8, mid)
    assert sk['branch_1']['Conv_0']['kernel'].shape == (5, 5, mid // 8, mid)
    assert sk['squeeze']['kernel'].shape == (mid, d)
  stats = variables['batch_stats']
  # SPADE normalises with batch statistics; the SK branches have batch norm
  assert set(stats['encoder_0']['norm_0']['param_free_norm']) == {'mean', 'var'}
  assert set(stats['identity']['sk_0']['sk']) == {'branch_0_bn', 'branch_1_bn'}
  # spectral norm on the ResBlk, fusion, residual and identity-stem convs only
  sn = {p[:-2] for p in flax.traverse_util.flatten_dict(stats) if p[-2] == 'SpectralNorm_0'}
  assert ('fuse',) in sn and ('identity', 'conv') in sn and ('bottleneck_0', 'conv_1') in sn
  assert ('encoder_0', 'conv_s') in sn and ('decoder_4', 'conv_0') in sn
  assert not {p[0] for p in sn} & {'align', 'to_rgb', 'attention'}
  assert len(sn) == 5 * 3 - 1 + 1 + 1 + 4 * 2 + 5 * 3 - 1  # encoder, identity, fuse, res, decoder


@pytest.fixture(scope='module')
def small_authors():
  model = AuthorsGenerator(**SMALL_AUTHORS)
  args = _inputs(64, 512)
  variables = _init(model, *args)
  return model, variables, args


def test_authors_generator_runs_at_64px_and_depends_on_identity(small_authors):
  model, variables, (image, semantic, identity) = small_authors
  run = jax.jit(lambda v, *a: model.apply(v, *a))
  out = run(variables, image, semantic, identity)
  assert out.shape == (2, 64, 64, 3) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  other_identity = run(variables, image, semantic, identity[::-1])
  other_semantic = run(variables, image, semantic[::-1], identity)
  assert float(jnp.abs(out[0] - other_identity[0]).max()) > 1e-4
  assert float(jnp.abs(out[0] - other_semantic[0]).max()) > 1e-4
  # 64 px: 4x4 bottleneck, so the 512-d identity becomes a 4x4x32 grid
  params = variables['params']
  assert params['identity']['conv']['Conv_0']['kernel'].shape == (3, 3, 32, 8)
  out_train, updates = jax.jit(
    lambda v, *a: model.apply(v, *a, train=True, mutable=['batch_stats'])
  )(variables, image, semantic, identity)
  assert out_train.shape == out.shape and set(updates) == {'batch_stats'}


def test_authors_generator_bfloat16(small_authors):
  model, variables, args = small_authors
  bf16 = AuthorsGenerator(**SMALL_AUTHORS, dtype=jnp.bfloat16)
  out32 = _apply(model, variables, *args)
  out16 = _apply(bf16, variables, *args)
  assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
  scale = float(jnp.abs(out32).mean())
  assert float(jnp.abs(out32 - out16).mean()) < 0.05 * scale + 0.02


def test_authors_generator_64px_full_width_shapes():
  model, args, variables = _authors_variables(res=64)
  out = jax.eval_shape(lambda v: model.apply(v, *args), variables)
  assert out.shape == (1, 64, 64, 3)
  # 2048-d identity on the 4x4 bottleneck: 128 channels into the identity conv
  assert variables['params']['identity']['conv']['Conv_0']['kernel'].shape == (3, 3, 128, 64)


@pytest.mark.parametrize('res', [64, 128])
def test_forward_shapes_and_dtypes(res):
  model = Generator(**SMALL)
  args = _inputs(res, 2048 if res == 128 else 512)
  variables = _init(model, *args)
  out = _apply(model, variables, *args)
  assert out.shape == (2, res, res, 3) and out.dtype == jnp.float32
  assert bool(jnp.all((out >= 0) & (out <= 1)))  # sigmoid output: images in [0, 1]
  out_train, updates = _apply(model, variables, *args, train=True, mutable=['batch_stats'])
  assert out_train.shape == out.shape
  # spectral norm's power iteration moved its u vectors
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize('preset', ['paper', 'authors'])
def test_full_size_presets_give_image_shapes(preset):
  model = generator_from_config({'preset': preset})
  for res in (64, 128):
    args = _inputs(res, 2048, batch=1)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), *args)[0])
    assert out.shape == (1, res, res, 3)


def test_paper_generator_options_from_the_authors_network():
  """The paper generator can borrow the SK identity branch and the attention gate."""
  model = Generator(
    **dict(SMALL, identity_branch='selective_kernel', identity_features=32, attention_gate=True)
  )
  args = _inputs(64, 512, batch=1)
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), *args))
  assert out.shape == (1, 64, 64, 3)
  params = variables['params']
  assert params['attention']['conv']['Conv_0']['kernel'].shape == (3, 3, 2, 1)
  assert params['identity']['sk_1']['expand']['Conv_0']['kernel'].shape == (1, 1, 16, 32)
  assert params['fuse']['Conv_0']['kernel'].shape == (3, 3, 16 + 32, 16)


def test_gradients_are_finite_and_reach_every_parameter():
  model = Generator(**SMALL)
  image, semantic, identity = _inputs(64, 512)
  variables = _init(model, image, semantic, identity)

  def loss_fn(params):
    out, _ = model.apply(
      {**variables, 'params': params},
      image,
      semantic,
      identity,
      train=True,
      mutable=['batch_stats'],
    )
    return jnp.mean((out - image) ** 2)

  grads = jax.jit(jax.grad(loss_fn))(variables['params'])
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for _, g in leaves)
  dead = [jax.tree_util.keystr(p) for p, g in leaves if not bool(jnp.any(g != 0))]
  assert not dead, dead


def test_output_depends_on_identity_and_semantic_map():
  model = Generator(**SMALL)
  image, semantic, identity = _inputs(64, 512)
  variables = _init(model, image, semantic, identity)
  out = _apply(model, variables, image, semantic, identity)
  other_identity = _apply(model, variables, image, semantic, identity[::-1])
  other_semantic = _apply(model, variables, image, semantic[::-1], identity)
  assert float(jnp.abs(out[0] - other_identity[0]).max()) > 1e-4
  assert float(jnp.abs(out[0] - other_semantic[0]).max()) > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  image, semantic, identity = _inputs(64, 512)
  fp32 = Generator(**SMALL)
  bf16 = Generator(**dict(SMALL, dtype=jnp.bfloat16))
  variables = _init(fp32, image, semantic, identity)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables['params']))
  out32 = _apply(fp32, variables, image, semantic, identity)
  out16 = _apply(bf16, variables, image, semantic, identity)
  assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
  assert float(jnp.abs(out32 - out16).mean()) < 0.02


def test_spectral_norm_switch():
  args = _inputs(64, 512)
  with_sn = jax.eval_shape(lambda: Generator(**SMALL).init(jax.random.key(0), *args))
  without = jax.eval_shape(
    lambda: Generator(**dict(SMALL, spectral_norm=False)).init(jax.random.key(0), *args)
  )
  assert 'batch_stats' in with_sn and 'batch_stats' not in without
  assert count_params(with_sn) == count_params(without)


def test_composite_changes_only_the_masked_region():
  rng = np.random.default_rng(1)
  image = rng.uniform(size=(1, 8, 8, 3)).astype(np.float32)
  generated = rng.uniform(size=(1, 8, 8, 3)).astype(np.float32)
  mask = np.zeros((1, 8, 8, 1), np.float32)
  mask[:, 2:6, 3:7] = 1
  out = np.asarray(composite(image, mask, generated))
  inside = mask[..., 0] > 0
  np.testing.assert_array_equal(out[~inside], image[~inside])
  np.testing.assert_array_equal(out[inside], generated[inside])


def test_identity_grid_reads_vectors_channel_major():
  vec = jnp.arange(2 * 32 * 16, dtype=jnp.float32).reshape(2, 512)
  grid = gen_lib.identity_to_grid(vec, 4)
  assert grid.shape == (2, 4, 4, 32)
  # element (b, c, h, w) of a [B, C, H, W] view lands at (b, h, w, c)
  assert float(grid[1, 2, 3, 5]) == float(vec[1, 5 * 16 + 2 * 4 + 3])
  with pytest.raises(ValueError, match='not divisible'):
    gen_lib.identity_to_grid(jnp.zeros((1, 100)), 4)


def test_spade_fused_conv_equals_separate_gamma_beta_convs():
  """Eq. (1) with one fused gamma/beta conv is the same function as two convs."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 6)).astype(np.float32))
  semantic = jax.nn.one_hot(rng.integers(0, NUM_CLASSES, (2, 16, 16)), NUM_CLASSES)
  separate = SPADE(hidden=16, fused=False)
  variables = jax.jit(separate.init)(jax.random.key(3), x, semantic)
  p = variables['params']
  fused_params = {
    'shared': p['shared'],
    'gamma_beta': {
      'Conv_0': {
        'kernel': jnp.concatenate(
          [p['gamma']['Conv_0']['kernel'], p['beta']['Conv_0']['kernel']], axis=-1
        ),
        'bias': jnp.concatenate(
          [p['gamma']['Conv_0']['bias'], p['beta']['Conv_0']['bias']], axis=-1
        ),
      }
    },
  }
  out_separate = _apply(separate, variables, x, semantic)
  out_fused = _apply(SPADE(hidden=16, fused=True), {'params': fused_params}, x, semantic)
  np.testing.assert_allclose(out_fused, out_separate, atol=1e-5)


def test_spade_is_a_per_pixel_affine_map_of_the_normalised_input():
  """With a constant semantic map gamma and beta are constant inside the image."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)).astype(np.float32) * 3 + 1)
  semantic = jax.nn.one_hot(jnp.full((1, 8, 8), 2), NUM_CLASSES)
  spade = SPADE(hidden=8)
  variables = jax.jit(spade.init)(jax.random.key(5), x, semantic)
  out = _apply(spade, variables, x, semantic)
  normalised = (x - x.mean(axis=(1, 2), keepdims=True)) / jnp.sqrt(
    x.var(axis=(1, 2), keepdims=True) + 1e-6
  )
  # interior pixels (away from zero padding) share one alpha and beta per channel
  inner_x, inner_y = np.asarray(normalised)[0, 2:6, 2:6], np.asarray(out)[0, 2:6, 2:6]
  for c in range(4):
    slope, intercept = np.polyfit(inner_x[..., c].ravel(), inner_y[..., c].ravel(), 1)
    np.testing.assert_allclose(inner_y[..., c], slope * inner_x[..., c] + intercept, atol=1e-4)


def test_generator_from_config_presets_and_errors():
  model = generator_from_config(celeba.get_config().model.generator)
  assert model.encoder_features == PAPER['encoder_features']
  model = generator_from_config(ml_collections.ConfigDict({'preset': 'authors'}))
  assert isinstance(model, AuthorsGenerator) and model == AuthorsGenerator()
  narrow = generator_from_config(
    ml_collections.ConfigDict(
      {'preset': 'authors', 'encoder_features': [8, 8, 16, 16, 16], 'dtype': jnp.bfloat16}
    )
  )
  assert narrow.encoder_features == (8, 8, 16, 16, 16) and narrow.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="model.generator.stem_features for preset 'authors'"):
    generator_from_config({'preset': 'authors', 'stem_features': 8})
  bad = AuthorsGenerator(**dict(SMALL_AUTHORS, decoder_features=(16, 8, 8, 8)))
  with pytest.raises(ValueError, match='downsamples 4 times but upsamples 3 times'):
    jax.eval_shape(lambda: bad.init(jax.random.key(0), *_inputs(64, 512)))
  bad = AuthorsGenerator(**dict(SMALL_AUTHORS, identity_features=(8, 12, 32)))
  with pytest.raises(ValueError, match='not divisible by its 8 groups'):
    jax.eval_shape(lambda: bad.init(jax.random.key(0), *_inputs(64, 512)))
  demo_model = generator_from_config(demo.get_config().model.generator)
  assert demo_model.stem_features == 16
  with pytest.raises(ValueError, match='model.generator.encoder_widths'):
    generator_from_config(ml_collections.ConfigDict({'encoder_widths': (1, 2)}))
  with pytest.raises(ValueError, match='preset'):
    generator_from_config(ml_collections.ConfigDict({'preset': 'nope'}))
  bad = Generator(**dict(SMALL, decoder_upsample=(True, True, True, False)))
  with pytest.raises(ValueError, match='upsamples 3 times'):
    jax.eval_shape(lambda: bad.init(jax.random.key(0), *_inputs(64, 512)))
  with pytest.raises(ValueError, match='multiple of 16'):
    jax.eval_shape(lambda: Generator(**SMALL).init(jax.random.key(0), *_inputs(72, 512)))


@pytest.mark.slow
def test_per_image_statistics_at_inference_are_the_authors_batch_of_one():
  """``inference.norm_statistics: per_image`` (the authors' demo: training mode, one image
  at a time): each output is the generator in training mode on that image alone, whatever
  its batch mates, and the stored statistics are neither used nor changed."""
  from train_fixtures import batch_for, tiny_config

  from sdgan_jax.networks import Networks, generate, init_generator, per_image_statistics

  cfg = tiny_config(64)  # at 32 px the 2x2 bottleneck's one-image statistics are too noisy
  cfg.model.generator = dict(SMALL_AUTHORS, preset='authors')
  cfg.inference = dict(norm_statistics='per_image')
  assert per_image_statistics(cfg)
  models = Networks(cfg)
  params, stats = init_generator(models, jax.random.key(3))
  batch = {
    k: jnp.asarray(v)
    for k, v in batch_for(cfg, seed=2, batch_size=3).items()
    if k in ('image', 'mask', 'semantic', 'target_identity')
  }
  run = jax.jit(
    lambda b, per_image: generate(
      models.generator, params, stats, b, cfg.num_classes, per_image=per_image
    ),
    static_argnums=1,
  )
  out, kept = run(batch, True)
  assert kept is stats or _same_tree(kept, stats)
  # the transcription: image 0 alone through the module in training mode
  first = {k: v[:1] for k, v in batch.items()}
  raw, _ = _apply(
    models.generator,
    {'params': params, **stats},
    first['image'] * (1 - first['mask']),
    jax.nn.one_hot(first['semantic'], cfg.num_classes),
    first['target_identity'],
    train=True,
    mutable=['batch_stats'],
  )
  want = first['image'] * (1 - first['mask']) + raw * first['mask']
  np.testing.assert_allclose(out[:1], want, atol=2e-5)
  # batch mates do not matter; the running statistics would give another face
  mates = dict(batch, image=batch['image'].at[1:].set(batch['image'][1:] * 0.5))
  np.testing.assert_allclose(run(mates, True)[0][0], out[0], atol=2e-5)
  assert float(jnp.abs(run(batch, False)[0][0] - out[0]).max()) > 1e-3


def _same_tree(a, b):
  return all(
    bool(jnp.all(x == y))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )
