"""FaceNet InceptionResnetV1: parity with facenet-pytorch 2.6.0 and the state-dict converter.

The pretrained .pt files are on GitHub only (not reachable from CI), so parity is checked
on randomly initialised weights. The BatchNorm statistics are calibrated on real images
and then perturbed, so that every layer normalises real activations (with default
statistics the random net collapses to one embedding for all inputs and the test would
prove little). The net is large for 2 CPU cores: one jitted Flax program computes both
the embedding and the logits, and PyTorch runs three small forwards.
"""

import importlib.util
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from tool_loader import load_tool

from sdgan_jax.converters import facenet as facenet_converter
from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member
from sdgan_jax.models.facenet import InceptionResnetV1
from sdgan_jax.weights import load_metadata, load_weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 24
# 190x190 face crops of skimage's astronaut (Eileen Collins, NASA, public domain) and
# camera (the cameraman, scikit-image's BSD-licensed test image).
_FACES = (
  ('astronaut', (slice(10, 200), slice(140, 330))),
  ('camera', (slice(50, 240), slice(105, 295))),
)
# Other real photos, only to calibrate the BatchNorm statistics.
_CALIBRATION = (
  ('chelsea', (slice(0, 300), slice(100, 400))),
  ('coffee', (slice(0, 400), slice(100, 500))),
  ('rocket', (slice(0, 427), slice(100, 527))),
  ('astronaut', (slice(0, 512), slice(0, 512))),
)


# facenet-pytorch's wheel, for when the package is not installed: installing it normally
# would pull its pins (torch<2.3, torchvision, numpy<2), and it is needed only for
# inception_resnet_v1.py (plus requests and tqdm, which that file imports).
FACENET_WHEEL = RegistryFile(
  registry='pypi',
  package='facenet-pytorch',
  version='2.6.0',
  archive='facenet_pytorch-2.6.0-py3-none-any.whl',
  sha256='ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca',
  member='facenet_pytorch/models/inception_resnet_v1.py',
)
_FACENET_MEMBERS = (
  'facenet_pytorch/models/inception_resnet_v1.py',
  'facenet_pytorch/models/utils/download.py',
)


def _facenet_package_dir(cache_dir: pathlib.Path) -> list[str]:
  """Where facenet_pytorch lives: the installed package, else files from the pinned wheel."""
  spec = importlib.util.find_spec('facenet_pytorch')
  if spec is not None:
    return list(spec.submodule_search_locations)
  archive = download_archive(FACENET_WHEEL, cache_dir)
  root = cache_dir / 'src'
  for member in _FACENET_MEMBERS:
    extract_member(archive, member, root / pathlib.PurePosixPath(member).parent)
  return [str(root / 'facenet_pytorch')]


def _torch_inception_resnet_v1(cache_dir: pathlib.Path):
  """facenet-pytorch's class, imported without the package __init__ (it needs torchvision)."""
  if 'facenet_pytorch.models.inception_resnet_v1' not in sys.modules:
    pkg = types.ModuleType('facenet_pytorch')
    pkg.__path__ = _facenet_package_dir(cache_dir)
    sys.modules.setdefault('facenet_pytorch', pkg)
  from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1 as Torch

  return Torch


def _image(name: str, crop) -> np.ndarray:
  img = getattr(skimage.data, name)()
  if img.ndim == 2:
    img = np.stack([img] * 3, -1)
  return img[crop].astype(np.float32) / 255.0


def _pil_bilinear(img: np.ndarray, size: int = 160) -> np.ndarray:
  """PIL's BILINEAR resize in float (facenet-pytorch's MTCNN crop resize), per channel."""
  return np.stack(
    [
      np.asarray(Image.fromarray(img[..., c], mode='F').resize((size, size), Image.BILINEAR))
      for c in range(img.shape[-1])
    ],
    -1,
  )


def _standardize_nchw(images: np.ndarray) -> 'torch.Tensor':
  return torch.from_numpy(((images * 255.0 - 127.5) / 128.0).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope='module')
def torch_model(download_cache):
  """Random facenet-pytorch model with a logits head and realistic BatchNorm statistics."""
  torch.manual_seed(0)
  model = _torch_inception_resnet_v1(download_cache)(classify=True, num_classes=NUM_CLASSES)
  norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  calib = np.stack([_pil_bilinear(_image(n, c)) for n, c in _CALIBRATION])
  for m in norms:
    m.reset_running_stats()
    m.momentum = None  # Cumulative average: the statistics of exactly this batch.
  model.train()
  model.dropout.p = 0.0
  with torch.no_grad():
    model(_standardize_nchw(calib))
    gen = torch.Generator().manual_seed(1)
    for m in norms:
      n = m.num_features
      std = m.running_var.sqrt()
      m.running_mean.add_(0.2 * std * torch.randn(n, generator=gen))
      m.running_var.mul_(0.6 + 0.8 * torch.rand(n, generator=gen))
      m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=gen))
      m.bias.copy_(0.2 * torch.randn(n, generator=gen))
      m.momentum = 0.1
  model.dropout.p = 0.6
  return model.eval()


@pytest.fixture(scope='module')
def state_dict(torch_model):
  return torch_model.state_dict()


@pytest.fixture(scope='module')
def faces():
  return np.stack([_image(n, c) for n, c in _FACES])


def test_resize_matches_pil_bilinear(faces):
  got = np.asarray(InceptionResnetV1().preprocess(jnp.asarray(faces)))
  want = (np.stack([_pil_bilinear(f) for f in faces]) * 255.0 - 127.5) / 128.0
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_parity_with_facenet_pytorch(torch_model, state_dict, faces):
  x = _standardize_nchw(np.stack([_pil_bilinear(f) for f in faces]))
  with torch.no_grad():
    want_logits = torch_model(x).numpy()
    torch_model.classify = False
    try:
      want_embed = torch_model(x).numpy()
    finally:
      torch_model.classify = True
  variables = facenet_converter.convert(state_dict)
  embed_model = InceptionResnetV1(num_classes=NUM_CLASSES)
  logits_model = InceptionResnetV1(classify=True, num_classes=NUM_CLASSES)
  # Flax takes the raw 190x190 crops: the parity covers its own resize and standardisation.
  both = jax.jit(lambda v, x: (embed_model.apply(v, x), logits_model.apply(v, x)))
  got_embed, got_logits = map(np.asarray, both(variables, jnp.asarray(faces)))

  assert got_embed.shape == (2, 512) and got_logits.shape == (2, NUM_CLASSES)
  # The random net must tell the two faces apart, or the comparison would be weak.
  assert float(want_embed[0] @ want_embed[1]) < 0.95
  embed_err = np.abs(got_embed - want_embed).max()
  logits_err = np.abs(got_logits - want_logits).max() / np.abs(want_logits).max()
  print(
    f'facenet parity: embedding max abs err {embed_err:.2e}; logits max err '
    f'{logits_err:.2e} relative to max |logit| {np.abs(want_logits).max():.3g}; '
    f'cosine between the faces {float(want_embed[0] @ want_embed[1]):.3f}'
  )
  np.testing.assert_allclose(np.linalg.norm(got_embed, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got_embed, want_embed, atol=1e-4)
  assert logits_err < 1e-4


def _tree_equal(a, b):
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def _cli():
  return load_tool('convert_facenet')


def test_round_trip_through_pt_file_and_cli(state_dict, tmp_path, capsys):
  expected = facenet_converter.convert(state_dict)
  pt = tmp_path / '20180402-114759-vggface2.pt'
  torch.save(state_dict, pt)
  assert _cli().main(['--input', str(pt), '--weights-dir', str(tmp_path / 'w')]) == 0
  assert 'facenet_vggface2.msgpack' in capsys.readouterr().out
  _tree_equal(load_weights('facenet_vggface2', tmp_path / 'w'), expected)
  meta = load_metadata('facenet_vggface2', tmp_path / 'w')
  assert meta['num_classes'] == NUM_CLASSES
  assert meta['source'].endswith('/v2.2.9/20180402-114759-vggface2.pt')
  assert meta['converter'] == 'sdgan_jax.converters.facenet'


def test_logits_head_only_when_present(state_dict):
  no_head = {k: v for k, v in state_dict.items() if not k.startswith('logits.')}
  converted = facenet_converter.convert(no_head)
  assert 'logits' not in converted['params']
  assert facenet_converter.num_classes_of(converted) is None
  with_head = facenet_converter.convert(state_dict)
  assert facenet_converter.num_classes_of(with_head) == NUM_CLASSES
  _tree_equal(
    {c: {k: v for k, v in t.items() if k != 'logits'} for c, t in with_head.items()}, converted
  )


def test_bad_state_dict_names_the_key(state_dict):
  missing = dict(state_dict)
  del missing['repeat_2.3.branch1.1.conv.weight']
  with pytest.raises(
    facenet_converter.ConversionError, match=r'missing keys: repeat_2\.3\.branch1\.1\.conv\.weight'
  ):
    facenet_converter.convert(missing)

  unexpected = dict(state_dict, **{'repeat_3.5.conv2d.weight': torch.zeros(1)})
  with pytest.raises(
    facenet_converter.ConversionError, match=r'unexpected keys: repeat_3\.5\.conv2d\.weight'
  ):
    facenet_converter.convert(unexpected)

  wrong = dict(state_dict, **{'last_bn.running_var': torch.ones(256)})
  with pytest.raises(facenet_converter.ConversionError, match=r'last_bn\.running_var'):
    facenet_converter.convert(wrong)

  half_head = {k: v for k, v in state_dict.items() if k != 'logits.bias'}
  with pytest.raises(facenet_converter.ConversionError, match=r'logits\.bias'):
    facenet_converter.convert(half_head)


def test_cli_without_input_prints_instructions(capsys):
  assert _cli().main([]) == 2
  out = capsys.readouterr().out
  assert '20180402-114759-vggface2.pt' in out and '20180408-102900-casia-webface.pt' in out
  assert 'tools/convert_facenet.py' in out
