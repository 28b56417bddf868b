"""The second stage (faces/verify.py) and the mesh's geometry: faces kept, negatives dropped,
turned and tilted faces aligned from their own points, the fallback region on the face.

The references are independent of the mesh: dlib's 68 landmarks of the sample faces (HOG
detector and shape predictor on the large upright photo), carried through the same turn as
the pixels, and negatives labelled by looking at them.
"""

import dataclasses
import math

import numpy as np
import pytest

from sdgan_jax.datasets import samples
from sdgan_jax.faces import align, detect, mesh, pipeline, verify
from sdgan_jax.faces import landmarks as lm

# Boxes (x0, y0, x1, y1) on the sample photos with no face in them, each looked at: the
# kind of thing the detector ensemble put candidates on.
NEGATIVES = {
  'obama': {
    'sleeve by the flag': (124, 769, 196, 841),
    'hand': (223, 872, 323, 972),
    'fingers': (640, 896, 660, 916),
    'flag edge': (115, 718, 141, 744),
  },
  'obama2': {'stars of the flag': (14, 74, 103, 164)},
  'obama3': {
    'jacket button': (692, 1547, 717, 1572),
    'side table': (139, 1883, 247, 1991),
    'chandelier': (394, 461, 451, 518),
    'arm and jacket': (1016, 867, 1164, 1014),
    'shoes': (361, 2181, 477, 2297),
    'sleeve buttons': (556, 1729, 683, 1856),
    'dark jacket': (842, 1874, 965, 1997),
    'folded arms': (270, 904, 398, 1031),
  },
  'biden': {
    'jacket button': (539, 1495, 566, 1523),
    'curtain': (474, 1289, 555, 1369),
    'sleeve buttons': (857, 1947, 927, 2018),
    'dark trousers': (361, 2042, 441, 2123),
  },
}
SKIMAGE_NEGATIVES = {
  'coffee': (200, 50, 500, 350),
  'rocket': (200, 100, 300, 200),
  'brick': (100, 100, 300, 300),
}
ANGLES = (0.0, 30.0, -45.0)
FACE_WIDTH = 110.0  # jaw-line width of the turned views, px


@pytest.fixture(scope='module')
def photos(download_cache):
  every = samples.fetch_sample_photos(download_cache)
  return {name: (image, samples.photo_landmarks(image)) for name, image in every.items()}


@pytest.fixture(scope='module')
def face_mesh(face_mesh_weights):
  return mesh.FaceMesh.load(face_mesh_weights[0])


def turned_face(image, points, degrees, width=FACE_WIDTH):
  """A 3-face-wide view of the face turned by ``degrees`` (counter-clockwise as seen), its
  jaw ``width`` px wide, and its 68 points carried along."""
  scale = width / np.ptp(points[:17, 0])
  t = math.radians(degrees)
  linear = scale * np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
  size = int(3 * width)
  offset = np.full(2, size / 2) - linear @ points.mean(0)
  matrix = np.concatenate([linear, offset[:, None]], axis=1)
  view = align.warp_affine(image, matrix, (size, size), mode='edge')
  return (
    np.clip(np.round(view), 0, 255).astype(np.uint8),
    align.apply_matrix(matrix, points).astype(np.float32),
  )


def blazeface_like(points):
  """A candidate as BlazeFace gives one: the points' box and six keypoints (right eye, left
  eye, nose tip, mouth centre, right ear, left ear)."""
  keypoints = np.stack(
    [
      points[lm.LEFT_EYE].mean(0),
      points[lm.RIGHT_EYE].mean(0),
      points[30],
      points[lm.MOUTH].mean(0),
      points[0],
      points[16],
    ]
  )
  box = np.concatenate([points.min(0), points.max(0)])
  return box.astype(np.float32), keypoints.astype(np.float32)


def candidates(boxes, keypoints=None):
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return detect.Detections(
    boxes,
    np.full(len(boxes), 0.6, np.float32),
    keypoints,
    tuple(('blazeface_short_range',) for _ in boxes),
  )


def test_second_stage_keeps_turned_faces_and_tightens_their_boxes(photos, face_mesh):
  for name, (image, points) in photos.items():
    for degrees in ANGLES:
      view, truth = turned_face(image, points, degrees)
      box, keypoints = blazeface_like(truth)
      loose = box + np.array([-0.5, -0.5, 0.5, 0.5]) * (box[2] - box[0])  # a box twice the face
      found = candidates([box, loose], np.stack([keypoints, keypoints]))
      kept = verify.judge(found, face_mesh(view, found))
      assert len(kept) == 1, (name, degrees, kept.presence)  # one face, the two merged
      assert kept.decided_by == ('mesh',) and kept.presence[0] >= verify.PRESENCE_THRESHOLD
      assert kept.sources == (('blazeface_short_range',),)
      x0, y0, x1, y1 = kept.boxes[0]
      slack = 0.08 * FACE_WIDTH
      inner = truth[17:]  # brows, eyes, nose, mouth: what identifies the face
      assert (inner[:, 0] >= x0 - slack).all() and (inner[:, 0] <= x1 + slack).all(), name
      assert (inner[:, 1] >= y0 - slack).all() and (inner[:, 1] <= y1 + slack).all(), name
      # The tightened box is the face's, not the loose candidate's.
      assert x1 - x0 < 1.6 * np.ptp(truth[:, 0]) and y1 - y0 < 1.8 * np.ptp(truth[:, 1]), (
        name,
        degrees,
        kept.boxes[0],
      )


def test_second_stage_rejects_negatives(photos, face_mesh):
  from skimage import data  # pylint: disable=import-outside-toplevel

  images = {name: photos[name][0] for name in NEGATIVES}
  boxes = {name: list(NEGATIVES[name].values()) for name in NEGATIVES}
  for name, box in SKIMAGE_NEGATIVES.items():
    images[name] = np.asarray(getattr(data, name)())
    if images[name].ndim == 2:
      images[name] = np.repeat(images[name][..., None], 3, axis=2)
    images[name] = np.ascontiguousarray(images[name][..., :3])
    boxes[name] = [box]
  names = list(images)
  found = [candidates(boxes[n]) for n in names]
  stack = [images[n] for n in names]
  fits = face_mesh.fit_many(stack, found)
  mirrors = verify.mirror_presence(face_mesh, stack, found, fits)
  for name, f, m, r in zip(names, found, fits, mirrors):
    kept = verify.judge(f, m, mirror=r)
    assert len(kept) == 0, (name, kept.presence)
    assert len(kept.rejected) == len(f)
    np.testing.assert_array_equal(kept.rejected.boxes, f.boxes)  # reported as detected
    small = np.array([min(b[2] - b[0], b[3] - b[1]) + 1 < verify.SMALL_PX for b in f.boxes])
    bar = np.where(small, mesh.PRESENCE_THRESHOLD, verify.PRESENCE_THRESHOLD)
    assert (kept.rejected.presence < bar).all(), (name, kept.rejected.presence)


def test_small_faces_pass_the_mirror(photos, face_mesh):
  """The sample faces 30 px wide (under ``SMALL_PX``), upright and turned, are kept: the
  mesh scores them faces on the crop and on its mirror image."""
  views, found = [], []
  for image, points in photos.values():
    for degrees in (0.0, 30.0):
      view, truth = turned_face(image, points, degrees, width=30.0)
      box, keypoints = blazeface_like(truth)
      views.append(view)
      found.append(candidates([box], keypoints[None]))
  fits = face_mesh.fit_many(views, found)
  mirrors = verify.mirror_presence(face_mesh, views, found, fits)
  for f, m, r in zip(found, fits, mirrors):
    assert min(f.boxes[0, 2:] - f.boxes[0, :2]) + 1 < verify.SMALL_PX
    assert list(r) == [0], (m[0].presence, r)  # the mirror was fitted
    kept = verify.judge(f, m, mirror=r)
    assert kept.decided_by == ('mesh',), (m[0].presence, r)


def test_mirrored_candidates_land_on_the_same_pixels():
  """A box and keypoints mirrored with the image cover the same pixels; the eyes and ears
  swap (the subject's right eye is on the image left again); mirroring twice is nothing."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  keypoints = np.array([[[20, 10], [30, 11], [25, 15], [25, 20], [15, 12], [35, 12]]], np.float32)
  found = detect.Detections(
    np.array([[12, 5, 38, 30], [0, 0, 9, 9]], np.float32),
    np.array([0.9, 0.5], np.float32),
    np.concatenate([keypoints, keypoints]),
  )
  flipped, moved = verify.mirrored(image, found, [0])
  assert len(moved) == 1
  x0, y0, x1, y1 = moved.boxes[0].astype(int)
  np.testing.assert_array_equal(
    flipped[y0 : y1 + 1, x0 : x1 + 1, :], image[y0 : y1 + 1, 12:39][:, ::-1]
  )
  for (x, y), (u, v) in zip(keypoints[0][[1, 0, 2, 3, 5, 4]], moved.keypoints[0]):
    assert v == y and (flipped[int(v), int(u)] == image[int(y), int(x)]).all()
  assert moved.keypoints[0, 0, 0] < moved.keypoints[0, 1, 0]  # right eye image-left
  back_image, back = verify.mirrored(flipped, moved, [0])
  np.testing.assert_array_equal(back_image, image)
  np.testing.assert_array_equal(back.boxes, found.boxes[:1])
  np.testing.assert_array_equal(back.keypoints, found.keypoints[:1])


def _fit(points, presence):
  return mesh.MeshFit(
    points=np.asarray(points, np.float32), presence=presence, roll=0.0, matrix=np.eye(2, 3)
  )


def test_judge_rules():
  """Tiny candidates stay unjudged, two confident detectors outvote a doubtful mesh, low
  presence is dropped and listed, one face's two candidates merge (all detectors kept),
  boxes become the mesh's."""
  rng = np.random.default_rng(0)
  face = np.concatenate([rng.uniform(100, 200, (468, 2)), np.zeros((468, 1))], axis=1)
  boxes = [
    (90, 90, 210, 210),
    (120, 120, 160, 160),
    (400, 400, 405, 405),
    (600, 10, 700, 110),
    (800, 10, 900, 110),
    (300, 300, 350, 350),
    (125, 125, 170, 170),
  ]
  both = ('blazeface_short_range', 'blazeface_full_range')
  found = detect.Detections(
    np.asarray(boxes, np.float32),
    np.array([0.9, 0.7, 0.6, 0.8, 0.8, 0.7, 0.6], np.float32),
    None,
    (('a',), ('b',), ('a',), ('b',), both, both, ('c',)),
  )
  fits = [
    _fit(face, 0.99),
    _fit(face + 1, 0.8),
    _fit(face, 0.01),
    _fit(face + 500, 0.2),
    _fit(face + 700, 0.1),
    _fit(face + 200, 0.1),
    _fit(face + 40, 0.35),
  ]
  kept = verify.judge(found, fits)
  # The mesh's face first (with the second mesh of it, and the doubtful box on its eye); then
  # by detector score: agreement (0.8), the unjudged 5-px box.
  assert kept.decided_by == ('mesh', 'agreement', 'unjudged')
  assert kept.sources == (('a', 'b', 'c'), both, ('a',))
  np.testing.assert_allclose(kept.boxes[0], mesh.points_box(face))
  np.testing.assert_array_equal(kept.boxes[1:], [boxes[4], boxes[2]])  # as detected
  assert kept.presence[0] == pytest.approx(0.99) and kept.presence[1] == pytest.approx(0.1)
  assert np.isnan(kept.presence[2])
  assert kept.meshes[0] is fits[0] and kept.meshes[1:] == (None, None)
  # One detector at 0.8, and two detectors at 0.7: below the agreement score.
  np.testing.assert_array_equal(kept.rejected.boxes, [boxes[3], boxes[5]])
  np.testing.assert_allclose(kept.rejected.presence, [0.2, 0.1])
  # Under SMALL_PX: the lower of crop and mirror against 0.5, and no agreement.
  small = detect.Detections(
    np.array([(0, 0, 29, 29), (50, 0, 79, 29), (100, 0, 129, 29), (150, 0, 179, 29)], np.float32),
    np.array([0.6, 0.6, 0.9, 0.6], np.float32),
    None,
    (('a',), ('a',), both, ('a',)),
  )
  fits = [_fit(face, 0.99), _fit(face + 300, 0.99), _fit(face + 600, 0.1), _fit(face + 900, 0.4)]
  kept = verify.judge(small, fits, mirror={0: 0.9, 1: 0.2})
  assert kept.decided_by == ('mesh',) and kept.presence[0] == pytest.approx(0.9)
  np.testing.assert_array_equal(kept.rejected.boxes, small.boxes[1:])
  np.testing.assert_allclose(kept.rejected.presence, [0.2, 0.1, 0.4])
  # The same sizes and scores at 60 px: a doubtful mesh (0.4) and agreement keep theirs.
  wide = dataclasses.replace(small, boxes=small.boxes * [1, 1, 2, 2] + [0, 0, 1, 1])
  assert verify.judge(wide, fits).decided_by == ('mesh', 'mesh', 'mesh', 'agreement')
  with pytest.raises(ValueError, match='2 mesh fits for 7'):
    verify.judge(found, fits[:2])
  with pytest.raises(ValueError, match='probability'):
    verify.VerifiedDetector(None, None, threshold=float('nan'))


def test_mesh_alignment_of_turned_and_tilted_faces(photos, face_mesh):
  """The 68 points from the mesh land on dlib's, the crop is the same at every roll, the mask
  covers the face, and the fallback region holds the face without being twice its size."""
  for name, (image, points) in photos.items():
    crops = []
    for degrees in ANGLES:
      view, truth = turned_face(image, points, degrees)
      box, keypoints = blazeface_like(truth)
      face = pipeline.Face(box=box, keypoints=keypoints, score=0.9)
      pipeline.prepare_detected(view, face, face_mesh, 128, min_mask_coverage=0.9)
      assert face.reason is None, (name, degrees, face.reason, face.detail)
      error = np.linalg.norm(face.image_landmarks - truth, axis=1) / FACE_WIDTH
      assert np.median(error) < 0.04 and error.max() < 0.12, (name, degrees, error.max())
      crops.append(face.landmarks)
      region = pipeline.face_region(face)
      assert (truth[:, 0] >= region[0]).all() and (truth[:, 0] <= region[2]).all()
      assert (truth[:, 1] >= region[1]).all() and (truth[:, 1] <= region[3]).all()
      side = max(region[2] - region[0], region[3] - region[1])
      assert side < 1.9 * FACE_WIDTH, (name, degrees, region)
    # Aligned from its own points, a face comes out the same whatever its roll.
    for other in crops[1:]:
      assert np.abs(other - crops[0]).max() < 0.04 * 128, name


def test_from_mesh_scheme_matches_dlib(photos, face_mesh):
  """The 68-from-468 table (landmarks.FROM_MESH) holds on the sample faces: 2.5% of the face
  width from dlib's points on average, 6% for all but a few (jaw) points, 10% at most."""
  for name, (image, points) in photos.items():
    box, keypoints = blazeface_like(points)
    fit = face_mesh(image, candidates([box], keypoints[None]))[0]
    width = np.ptp(points[:17, 0])
    error = np.linalg.norm(lm.from_mesh(fit.points) - points, axis=1) / width
    assert error.mean() < 0.025 and np.percentile(error, 95) < 0.06 and error.max() < 0.1, (
      name,
      error.mean(),
      error.max(),
    )
  with pytest.raises(ValueError, match='468 points'):
    lm.from_mesh(np.zeros((68, 2)))


def test_a_loose_box_gets_a_second_crop_from_its_keypoints(photos, face_mesh):
  """A face in the corner of a box twice its size (an ensemble's box enclosing a larger
  detection of it), found by both networks: MediaPipe's crop of the box leaves the face in
  a corner, a third of the crop, and the mesh mostly sees no face there (or fits one 1.45-1.8
  times too wide); the crop placed from the keypoints gives a sure mesh, and the face a
  box of its own size."""
  both = ('blazeface_short_range', 'blazeface_full_range')
  views, found, truths = [], [], []
  for image, points in photos.values():
    for degrees in (0.0, 30.0):
      view, truth = turned_face(image, points, degrees)
      box, keypoints = blazeface_like(truth)
      loose = box + np.array([0.0, 0.0, 1.0, 1.0]) * (box[2] - box[0])
      views.append(view)
      truths.append(truth)
      found.append(
        detect.Detections(loose[None], np.array([0.9], np.float32), keypoints[None], (both,))
      )
  fits = face_mesh.fit_many(views, found)
  before = [verify.judge(f, m) for f, m in zip(found, fits)]
  # The premise: from the box alone most of these faces would be left to the fallback.
  assert sum(v.decided_by == ('agreement',) for v in before) >= len(views) // 2, [
    m[0].presence for m in fits
  ]
  refits = verify.keypoint_refits(face_mesh, views, found, fits)
  for f, m, truth in zip(found, refits, truths):
    kept = verify.judge(f, m)
    assert kept.decided_by == ('mesh',), m[0].presence
    assert kept.presence[0] >= mesh.PRESENCE_THRESHOLD
    x0, y0, x1, y1 = kept.boxes[0]
    inner = truth[17:]
    slack = 0.08 * FACE_WIDTH
    assert (inner[:, 0] >= x0 - slack).all() and (inner[:, 0] <= x1 + slack).all()
    assert (inner[:, 1] >= y0 - slack).all() and (inner[:, 1] <= y1 + slack).all()
    assert x1 - x0 < 1.6 * np.ptp(truth[:, 0]) and y1 - y0 < 1.8 * np.ptp(truth[:, 1])


def test_keypoint_crop_only_for_kept_doubtful_candidates():
  """Only kept candidates (by the mesh or by agreement) from SMALL_PX on with keypoints are
  fitted again: a rejected candidate is never let in."""
  rng = np.random.default_rng(0)
  face = np.concatenate([rng.uniform(100, 200, (468, 2)), np.zeros((468, 1))], axis=1)
  both = ('blazeface_short_range', 'blazeface_full_range')
  boxes = np.array([(0, 0, 99, 99)] * 5 + [(0, 0, 29, 29)], np.float32)
  keypoints = np.tile(
    np.array([[30, 40], [70, 40], [50, 60], [50, 75], [10, 45], [90, 45]], np.float32), (6, 1, 1)
  )
  found = detect.Detections(
    boxes,
    np.array([0.9, 0.6, 0.6, 0.9, 0.6, 0.9], np.float32),
    keypoints,
    (both, ('a',), ('a',), both, ('a',), both),
  )
  presence = [0.1, 0.4, 0.1, 0.9, 0.2, 0.4]
  fits = [_fit(face, p) for p in presence]
  # 0: agreement; 1: doubtful mesh; 2 and 4: rejected; 3: sure mesh; 5: under SMALL_PX.
  assert verify.needs_keypoint_crop(found, fits) == [0, 1, 3]
  no_keypoints = dataclasses.replace(found, keypoints=None)
  assert verify.needs_keypoint_crop(no_keypoints, fits) == []
