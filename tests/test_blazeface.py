"""BlazeFace: the .tflite reader, the Flax ports against TensorFlow Lite, decoding, tiling.

The reference for the networks is TensorFlow Lite's own interpreter (``tf.lite.Interpreter``
in TensorFlow 2.21, deprecated but present) running the very files we convert, with its
default delegates off so that it runs TFLite's reference kernels.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax import weights
from sdgan_jax.converters import registry
from sdgan_jax.converters.tflite_file import TfliteModel
from sdgan_jax.datasets import samples
from sdgan_jax.faces import blazeface_detector
from sdgan_jax.models import blazeface as models


def interpreter(path, preserve=False):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    runner = tf.lite.Interpreter(
      model_path=str(path),
      experimental_op_resolver_type=resolver,
      experimental_preserve_all_tensors=preserve,
    )
  runner.allocate_tensors()
  return runner


def run_tflite(runner, images_u8):
  """(regressors, logits) of the TFLite model, one image at a time (its batch is 1)."""
  inp = runner.get_input_details()[0]['index']
  outs = runner.get_output_details()
  reg = next(o['index'] for o in outs if o['shape'][-1] == models.NUM_COORDS)
  cls = next(o['index'] for o in outs if o['shape'][-1] == 1)
  regs, logits = [], []
  for image in images_u8:
    runner.set_tensor(inp, (image.astype(np.float32) / 127.5 - 1.0)[None])
    runner.invoke()
    regs.append(runner.get_tensor(reg)[0])
    logits.append(runner.get_tensor(cls)[0, :, 0])
  return np.stack(regs), np.stack(logits)


@pytest.fixture(scope='module')
def photos(download_cache):
  return samples.fetch_sample_photos(download_cache)


def test_platform_wheels_are_fetched_by_their_exact_tags():
  flags = registry._pip_selection('mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl')
  assert flags == [
    '--only-binary',
    ':all:',
    '--implementation',
    'cp',
    '--python-version',
    '3.11',
    '--abi',
    'cp311',
    '--platform',
    'manylinux_2_28_x86_64',
  ]
  assert registry._pip_selection('x-1.0-py3-none-any.whl') == []
  assert registry._pip_selection('x-1.0.tar.gz') == ['--no-binary', ':all:']


def test_sparse_and_float16_weights_decode_as_tflite_does(blazeface_weights):
  """Every DENSIFY and DEQUANTIZE output of the full-range file (46 sparse float16 tensors)
  equals the tensor TFLite's interpreter computes."""
  path = blazeface_weights[1]['blazeface_full_range']
  graph = TfliteModel(path)
  runner = interpreter(path, preserve=True)
  runner.set_tensor(runner.get_input_details()[0]['index'], np.zeros((1, 192, 192, 3), np.float32))
  runner.invoke()
  decoded = [op for op in graph.ops if op.kind in ('DENSIFY', 'DEQUANTIZE')]
  assert sum(op.kind == 'DENSIFY' for op in decoded) == 46
  for op in decoded:
    ours = graph.constant(op.outputs[0])
    theirs = runner.get_tensor(op.outputs[0])
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, graph.name(op.outputs[0])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize('name', sorted(blazeface_detector.CONFIGS))
def test_converted_network_matches_tflite(name, blazeface_weights, photos):
  """The jitted Flax port gives TFLite's outputs on a face photo, noise and a blank input."""
  weights_dir, files = blazeface_weights
  variables = weights.load_weights(name, weights_dir)
  meta = weights.load_metadata(name, weights_dir)
  assert meta['archive_sha256'] == registry_source(name).sha256
  size = models.MODELS[name].input_size
  from PIL import Image  # pylint: disable=import-outside-toplevel

  face = np.asarray(Image.fromarray(photos['astronaut']).resize((size, size), Image.BILINEAR))
  noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
  images = np.stack([face, noise, np.zeros_like(face)])
  ref_reg, ref_logit = run_tflite(interpreter(files[name]), images)
  model = models.MODELS[name]()
  reg, logit = jax.jit(model.apply)(variables, jnp.asarray(images, jnp.float32) / 255.0)
  for ours, theirs, what in ((reg, ref_reg, 'regressors'), (logit, ref_logit, 'logits')):
    # Per input: noise drives the short-range outputs to ~1e4, the photo's stay below ~200.
    for k in range(len(images)):
      err = float(np.abs(np.asarray(ours)[k] - theirs[k]).max())
      scale = float(np.abs(theirs[k]).max())
      print(f'{name} {what} input {k}: max abs error {err:.2g} of max |value| {scale:.3g}')
      assert err <= 1e-5 * scale + 1e-4, (what, k, err, scale)
  # The photo's face is found, by both.
  assert ref_logit[0].max() > 1.0 and float(np.asarray(logit)[0].max()) > 1.0


def registry_source(name):
  from sdgan_jax.converters import fetch  # pylint: disable=import-outside-toplevel

  return fetch.converter(name).SOURCE


def test_anchors_follow_the_ssd_grid():
  short = blazeface_detector.anchor_centres(128, (8, 16, 16, 16), True)
  full = blazeface_detector.anchor_centres(192, (4,), False)
  assert short.shape == (896, 2) and full.shape == (2304, 2)
  np.testing.assert_allclose(short[:2], [[4, 4], [4, 4]])  # 16x16 grid, 2 per cell
  np.testing.assert_allclose(short[512:518], [[8, 8]] * 6)  # 8x8 grid, 6 per cell
  np.testing.assert_allclose(full[:2], [[2, 2], [6, 2]])  # 48x48 grid, x fastest


def test_detector_finds_the_sample_faces_with_their_keypoints(blazeface_weights, photos):
  """On each sample photo (faces 90-290 px), each model's best box holds the face that
  dlib's landmarks mark, and its eye keypoints sit on the landmarks' eye centres."""
  for name in blazeface_detector.CONFIGS:
    detector = blazeface_detector.BlazeFaceDetector(name, weights_dir=blazeface_weights[0])
    for photo_name, photo in photos.items():
      points = samples.photo_landmarks(photo)
      width = np.ptp(points[:17, 0])
      found = detector(photo)
      assert len(found) >= 1, (name, photo_name)
      x0, y0, x1, y1 = found.boxes[0]
      eyes = np.stack([points[36:42].mean(0), points[42:48].mean(0)])
      assert np.all(
        (eyes[:, 0] > x0) & (eyes[:, 0] < x1) & (eyes[:, 1] > y0) & (eyes[:, 1] < y1)
      ), (name, photo_name)
      kp = found.keypoints[0]
      # The subject's right eye (keypoint 0) is the image-left eye (landmarks 36-41).
      eye_rows = [blazeface_detector.RIGHT_EYE, blazeface_detector.LEFT_EYE]
      err = np.linalg.norm(kp[eye_rows] - eyes, axis=1)
      assert err.max() < 0.1 * width, (name, photo_name, err, width)
      assert found.sources == (name,) * len(found)


@pytest.mark.parametrize('height,width', [(4000, 6000), (1080, 1920), (200, 300), (900, 128)])
def test_tile_pyramid_holds_every_face_whole_in_a_tile_at_a_working_scale(height, width):
  """For faces from 20 px to the photo's size anywhere in the photo: some tile sees the face
  at a width the network finds, owns its centre and holds the whole face."""
  rng = np.random.default_rng(height)
  for name, config in blazeface_detector.CONFIGS.items():
    lo, hi = config.face_range
    plan = blazeface_detector.plan_tiles(height, width, config.tile_size, config.face_range, 20.0)
    for size in np.geomspace(20, min(height, width), 12):
      for _ in range(10):
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        ok = False
        for t in plan:
          sx, sy = t.scale
          eff = size * sx
          px, py = cx * sx - t.x0, cy * sy - t.y0  # centre in tile pixels
          half = eff / 2
          owns = t.core[0] <= cx * sx < t.core[2] and t.core[1] <= cy * sy < t.core[3]
          inside = (
            half <= px + 1
            and px + half <= config.tile_size + 1
            and half <= py + 1
            and py + half <= config.tile_size + 1
          )
          if lo <= eff <= hi and owns and (inside or eff >= config.tile_size / 2):
            ok = True
            break
        assert ok, (name, height, width, size, cx, cy)


def test_weighted_nms_averages_a_face_and_keeps_apart_faces():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
  scores = np.array([0.9, 0.3, 0.8], np.float32)
  points = np.zeros((3, 6, 2), np.float32)
  points[1] += 4
  b, s, p = blazeface_detector.weighted_nms(boxes, scores, points, 0.3)
  assert len(b) == 2 and list(s) == pytest.approx([0.9, 0.8])
  np.testing.assert_allclose(b[0], [0.25, 0.25, 10.25, 10.25], rtol=1e-6)
  np.testing.assert_allclose(p[0], np.full((6, 2), 1.0), rtol=1e-6)
