"""The face mesh: the Flax port against TensorFlow Lite, the converter's mapping, the runtime.

The network's reference is TensorFlow Lite's own interpreter on the very file we convert
(reference kernels, default delegates off, as in ``test_blazeface.py``). The runtime is
checked on the sample faces against dlib's 68 landmarks, upright and turned in the image
plane, and on photos without faces.
"""

import math

import numpy as np
import pytest
from test_blazeface import interpreter

from sdgan_jax import weights
from sdgan_jax.converters import face_mesh as converter
from sdgan_jax.converters import mediapipe_wheel
from sdgan_jax.converters.tflite_file import TfliteModel
from sdgan_jax.datasets import samples
from sdgan_jax.faces import align, blazeface_detector, detect, mesh
from sdgan_jax.faces import landmarks as lm
from sdgan_jax.models import face_mesh as models

# The sample faces the runtime tests use (three people, faces 90-290 px wide).
PHOTOS = ('obama', 'biden', 'astronaut')


@pytest.fixture(scope='module')
def photos(download_cache):
  every = samples.fetch_sample_photos(download_cache)
  return {name: (every[name], samples.photo_landmarks(every[name])) for name in PHOTOS}


@pytest.fixture(scope='module')
def face_mesh(face_mesh_weights):
  return mesh.FaceMesh.load(face_mesh_weights[0])


def test_converted_network_matches_tflite(face_mesh_weights):
  """The jitted Flax port gives TFLite's outputs on a face crop, noise and a blank input."""
  weights_dir, path = face_mesh_weights
  assert weights.load_metadata('face_mesh', weights_dir)['archive_sha256'] == (
    converter.SOURCE.sha256
  )
  variables = weights.load_weights('face_mesh', weights_dir)
  from skimage import data  # pylint: disable=import-outside-toplevel

  # Eileen Collins's face, framed as the runtime frames a detection of it.
  crops, _, _ = mesh.FaceMesh(variables).crops(data.astronaut(), [[171, 65, 278, 172]])
  noise = np.random.default_rng(0).integers(0, 256, crops.shape[1:], np.uint8)
  images_u8 = np.stack([crops[0], noise, np.zeros_like(noise)])
  images = images_u8.astype(np.float32) / 255.0

  runner = interpreter(path)
  outputs = {d['shape'][-1]: d['index'] for d in runner.get_output_details()}
  ref_points, ref_logits = [], []
  for image in images:
    runner.set_tensor(runner.get_input_details()[0]['index'], image[None])
    runner.invoke()
    ref_points.append(runner.get_tensor(outputs[1404]).reshape(468, 3))
    ref_logits.append(runner.get_tensor(outputs[1]).reshape(()))
  # The program the runtime runs (its XLA options, uint8 in, scaled inside).
  points, logits = mesh._jitted_apply()(variables, images_u8)  # pylint: disable=protected-access
  for ours, theirs, what in ((points, ref_points, 'landmarks'), (logits, ref_logits, 'logit')):
    for k in range(len(images)):
      err = float(np.abs(np.asarray(ours)[k] - theirs[k]).max())
      scale = float(np.abs(theirs[k]).max())
      print(
        f'face mesh {what} input {k}: max abs error {err:.2g} of max |value| {scale:.3g}'
        f' ({err / scale:.1g} relative)'
      )
      assert err <= 1e-5 * scale + 1e-4, (what, k, err, scale)
  # The face crop holds a face for both; noise does not.
  assert ref_logits[0] > 2.0 and float(logits[0]) > 2.0
  assert ref_logits[1] < 0.0


def test_converter_pairs_each_file_layer_with_the_model_layer_it_fits(face_mesh_weights):
  """Trunk, landmark head, presence head: each operator's kind, kernel and stride match the
  layer it is given to, and a model that differs in any of them is refused by name."""
  graph = TfliteModel(face_mesh_weights[1])
  model, shape = models.FaceMeshNet(), (1, 192, 192, 3)
  ops = converter.weighted_ops_by_branch(graph)
  calls = mediapipe_wheel.layer_calls(model, shape)
  assert len(ops) == len(calls) == 68  # 25 convs, 20 depthwise convs, 23 PReLUs
  expected = mediapipe_wheel.expected_params(model, shape)
  for op, (path, module) in zip(ops, calls):
    leaf = expected
    for scope in path:
      leaf = leaf[scope]
    if op.kind == 'PRELU':
      assert isinstance(module, models.PReLU), path
      assert graph.shape(op.inputs[1])[-1] == leaf['alpha'].shape[0], path
    else:
      assert op.kind == ('DEPTHWISE_CONV_2D' if module.depthwise else 'CONV_2D'), path
      assert op.options['strides'] == (module.strides,) * 2, path
      out, h, w, c = graph.shape(op.inputs[1])
      kernel = (h, w, out, c) if module.depthwise else (h, w, c, out)
      assert kernel == leaf['kernel'].shape, path
  # The file interleaves the heads; sorted by branch, the presence head's layers come last.
  assert [path[0] for path, _ in calls[-9:]] == ['presence_block0'] * 3 + [
    'presence_reduce',
    'presence_reduce_prelu',
  ] + ['presence_block1'] * 3 + ['presence_out']

  def refused(**changes):
    saved = {k: getattr(models, k) for k in changes}
    try:
      for k, v in changes.items():
        setattr(models, k, v)
      with pytest.raises(ValueError) as e:
        converter.convert(face_mesh_weights[1])
      return str(e.value)
    finally:
      for k, v in saved.items():
        setattr(models, k, v)

  assert refused(HEAD_WIDTH=16).startswith('landmarks_reduce:')  # kernel shape
  trunk = list(models.MESH_TRUNK)
  trunk[1:3] = [(16, 2), (32, 1)]  # the same sizes, downsampled one block early
  assert refused(MESH_TRUNK=tuple(trunk)).startswith('block1/depthwise:')  # stride
  assert 'weighted layers' in refused(PRESENCE_HEAD=((128, 2), (128, 1)))  # layer count


def candidate_from_landmarks(points):
  """A BlazeFace-like candidate from 68 landmarks: their box, and keypoints at the eye
  centres, nose tip, mouth centre and jaw ends (subject's right eye = image-left eye)."""
  eyes = lm.eye_centres(points)
  keypoints = np.stack(
    [eyes[0], eyes[1], points[30], lm.mouth_centre(points), points[0], points[16]]
  )
  return mesh.points_box(points), keypoints


def turned(photo, points, degrees):
  """The photo and its landmarks turned by ``degrees`` (counter-clockwise as seen) about the
  face's centre."""
  t = math.radians(degrees)
  centre = points.mean(0)
  rotation = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
  matrix = np.concatenate([rotation, (centre - rotation @ centre)[:, None]], axis=1)
  out = align.warp_affine(photo, matrix, photo.shape[:2], mode='edge', antialias=False)
  return np.clip(np.round(out), 0, 255).astype(np.uint8), align.apply_matrix(matrix, points)


@pytest.mark.parametrize('degrees', [0, 30, 45])
def test_mesh_fits_real_faces_upright_and_turned(face_mesh, photos, degrees):
  """Presence >= 0.5 and the mesh's eye centres on dlib's, within 8% of the face width."""
  from skimage.measure import points_in_poly  # pylint: disable=import-outside-toplevel

  for name, (photo, upright_points) in photos.items():
    image, points = turned(photo, upright_points, degrees) if degrees else (photo, upright_points)
    candidate = candidate_from_landmarks(points)
    (fit,) = face_mesh(image, [candidate])
    width = np.linalg.norm(points[lm.JAW[0]] - points[lm.JAW[-1]])
    eyes = lm.eye_centres(points)
    err = (
      np.linalg.norm(
        np.stack([fit.centre(mesh.RIGHT_EYE), fit.centre(mesh.LEFT_EYE)]) - eyes, axis=1
      )
      / width
    )
    print(
      f'{name} at {degrees} deg: presence {fit.presence:.4f}, roll {fit.roll:.1f}, '
      f'eye error {err.max():.3f} of the face width'
    )
    assert fit.presence >= 0.5, (name, degrees, fit.presence)
    assert err.max() < 0.08, (name, degrees, err)
    base = mesh.roi_matrix(*candidate_from_landmarks(upright_points))[1]
    # The first fit is turned by the keypoints' roll; the refit (``fit_many``'s refine) by
    # the first mesh's own eye corners, which agree to a few degrees.
    [[first]] = face_mesh.fit_many([image], [[candidate]], refine=False)
    assert first.roll == pytest.approx(base + degrees, abs=1e-6)
    assert fit.roll == pytest.approx(base + degrees, abs=3)
    assert fit.points.shape == (468, 3) and fit.points.dtype == np.float32
    # The face oval holds the eyes, brows, nose and mouth of the 68-point scheme.
    assert points_in_poly(points[17:], fit.points[mesh.FACE_OVAL, :2]).all(), name
    np.testing.assert_array_equal(fit.box(), mesh.points_box(fit.points))


def test_presence_is_low_without_a_face(face_mesh):
  """Photos without faces (coffee, a brick wall, a cat): low presence wherever the box is."""
  from skimage import data  # pylint: disable=import-outside-toplevel

  for name in ('coffee', 'brick', 'chelsea'):
    image = getattr(data, name)()
    image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
    h, w = image.shape[:2]
    s = min(h, w) // 3
    boxes = [
      [w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2 - 1, h / 2 + s / 2 - 1],
      [0, 0, s - 1, s - 1],
      [w - 2 * s, h - 2 * s, w - 1, h - 1],
    ]
    scores = [fit.presence for fit in face_mesh(image, boxes)]
    print(f'{name}: presence {np.round(scores, 4).tolist()}')
    assert max(scores) < 0.5, (name, scores)
  # A detector's output goes in as it is; no candidates, no fits.
  found = detect.Detections(boxes=np.float32(boxes), scores=np.ones(3, np.float32))
  assert [f.presence for f in face_mesh(image, found)] == pytest.approx(scores)
  assert face_mesh(image, []) == []


def test_region_of_interest_follows_mediapipes_rule():
  """Centred on the box, 1.5x its longer side, turned by the eye line's roll."""
  box = np.array([100, 200, 199, 259])  # 100 x 60 px: the square is 150 px
  eyes = np.array([[120.0, 240.0], [170.0, 240.0 - 50.0 * math.tan(math.radians(30))]])
  keypoints = np.concatenate([eyes, np.zeros((4, 2))])
  matrix, roll = mesh.roi_matrix(box, keypoints)
  assert roll == pytest.approx(30.0)
  assert align.matrix_scale(matrix) == pytest.approx(192 / 150)
  np.testing.assert_allclose(align.apply_matrix(matrix, [149.5, 229.5]), [95.5, 95.5], atol=1e-9)
  # The eye line is level in the network's input, the right eye on the left.
  right, left = align.apply_matrix(matrix, eyes)
  assert right[1] == pytest.approx(left[1]) and right[0] < left[0]
  assert mesh.roi_matrix(box)[1] == 0.0
  assert blazeface_detector.RIGHT_EYE == 0 and blazeface_detector.LEFT_EYE == 1


def test_index_tables_are_closed_contours_of_distinct_points():
  tables = (
    mesh.FACE_OVAL,
    mesh.RIGHT_EYE,
    mesh.LEFT_EYE,
    mesh.RIGHT_BROW,
    mesh.LEFT_BROW,
    mesh.LIPS_OUTER,
    mesh.LIPS_INNER,
    mesh.NOSE_MIDLINE,
  )
  for table in tables:
    assert len(set(table.tolist())) == len(table)
    assert table.min() >= 0 and table.max() < mesh.NUM_POINTS
  everything = np.concatenate(tables[:-1])
  assert len(set(everything.tolist())) == len(everything)  # no point in two contours
  assert mesh.NOSE_TIP in mesh.NOSE_MIDLINE and mesh.CHIN in mesh.FACE_OVAL
