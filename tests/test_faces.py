"""Face geometry on real photos: detection, 68 landmarks, alignment, masks, semantic maps,
paste-back (docs/data.md). No CelebA: the photos of tests/faces_fixture.py (face-recognition
sdist's Obama x3 and Biden, scikit-image's astronaut), each with one frontal face.

Independent references: dlib's CNN detector for the HOG boxes, dlib's 5-point model for the
68-point eye corners, skimage's SimilarityTransform for the Umeyama fit, the 68-point model
re-run on the aligned crop for the warp, PIL's polygon fill for the mask rasterisation, and
a forward nearest-neighbour mapping of the mask for paste-back.
"""

import pathlib
import subprocess
import sys
import textwrap

import faces_fixture
import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdgan_jax.datasets import features
from sdgan_jax.faces import align, detect, masks, paste, pipeline
from sdgan_jax.faces import landmarks as lm

CLASS = masks.CLASS_IDS
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def photos(download_cache):
  return faces_fixture.load_face_photos(download_cache)


@pytest.fixture(scope='module')
def hog():
  # The test faces are >= 87 px: no upsampling needed (and the large photos stay fast).
  return detect.FaceDetector('hog', upsample=0)


@pytest.fixture(scope='module')
def predictor():
  return detect.LandmarkPredictor()


@pytest.fixture(scope='module')
def found(photos, hog, predictor):
  """name -> (Detections, [68, 2] landmarks of the best face)."""
  out = {}
  for name, image in photos.items():
    dets = hog(image)
    out[name] = (dets, predictor(image, dets.boxes[0]))
  return out


def _iou(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter)


def _psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255.0**2 / mse)


# --- detection and landmarks ---------------------------------------------------------------


def test_hog_finds_the_one_face_where_the_cnn_detector_does(photos, found):
  cnn = detect.FaceDetector('cnn', upsample=0)
  for name, image in photos.items():
    dets, _ = found[name]
    assert len(dets) == 1, (name, dets.boxes)
    assert dets.boxes.shape == (1, 4) and dets.boxes.dtype == np.float32
    assert dets.scores[0] > 0
    # The CNN detector is slow on CPU: run it on a copy at most 500 px on its longer side.
    f = min(1.0, 500 / max(image.shape[:2]))
    small = np.asarray(
      Image.fromarray(image).resize(
        (round(image.shape[1] * f), round(image.shape[0] * f)), Image.BILINEAR
      )
    )
    ref = cnn(small)
    assert len(ref) == 1, name
    assert _iou(dets.boxes[0], ref.boxes[0] / f) > 0.5, (name, dets.boxes[0], ref.boxes[0] / f)


def test_two_faces_best_first_and_none_in_a_flat_image(photos, hog):
  assert len(hog(np.full((200, 200, 3), 128, np.uint8))) == 0
  obama = photos['obama']
  obama = np.asarray(
    Image.fromarray(obama).resize(
      (round(obama.shape[1] * 512 / obama.shape[0]), 512), Image.BILINEAR
    )
  )
  both = np.concatenate([photos['astronaut'], obama], axis=1)
  # dlib's default threshold also fires (score ~0.07) on the astronaut's shoulder patch.
  assert hog(both).scores.min() < 0.5
  dets = detect.FaceDetector('hog', upsample=0, threshold=0.5)(both)
  assert len(dets) == 2
  assert np.all(np.diff(dets.scores) <= 0)
  centres_x = (dets.boxes[:, 0] + dets.boxes[:, 2]) / 2
  assert sorted(centres_x < 512) == [False, True]  # one face in each half


def test_eye_landmarks_inside_box_and_on_the_5_point_eye_corners(photos, found):
  import dlib  # pylint: disable=import-outside-toplevel

  from sdgan_jax.faces.detect import dlib_model_path  # pylint: disable=import-outside-toplevel

  five = dlib.shape_predictor(dlib_model_path('shape_predictor_5_face_landmarks.dat'))
  for name, image in photos.items():
    dets, points = found[name]
    assert points.shape == (68, 2) and points.dtype == np.float32
    x0, y0, x1, y1 = dets.boxes[0]
    eyes = points[36:48]
    assert np.all((eyes[:, 0] >= x0) & (eyes[:, 0] <= x1)), name
    assert np.all((eyes[:, 1] >= y0) & (eyes[:, 1] <= y1)), name
    left, right = lm.eye_centres(points)
    assert left[0] < right[0], 'image-left eye (36-41) must have the smaller x'
    iod = np.linalg.norm(right - left)
    # dlib's 5-point model (trained separately) marks the four eye corners 36, 39, 42, 45.
    shape = five(image, dlib.rectangle(*(int(v) for v in dets.boxes[0])))
    corners5 = np.array([(p.x, p.y) for p in shape.parts()])[:4]
    corners68 = points[[36, 39, 42, 45]]
    dist = np.linalg.norm(corners5[:, None] - corners68[None], axis=-1).min(1)
    assert np.all(dist < 0.1 * iod), (name, dist / iod)


def test_inputs_are_checked(hog, predictor):
  with pytest.raises(ValueError, match='RGB'):
    hog(np.zeros((64, 64), np.uint8))
  with pytest.raises(ValueError, match='RGBA'):
    hog(np.zeros((64, 64, 4), np.uint8))
  with pytest.raises(TypeError, match='uint8'):
    predictor(np.zeros((64, 64, 3), np.float32), [0, 0, 10, 10])
  with pytest.raises(ValueError, match="'hog' or 'cnn'"):
    detect.FaceDetector('mtcnn')
  with pytest.raises(ValueError, match='68'):
    masks.face_mask(np.zeros((5, 2)), 64)


def test_importing_faces_needs_no_dlib():
  code = (
    "import sys; sys.modules['dlib'] = None\n"
    'import sdgan_jax.faces, sdgan_jax.faces.pipeline, sdgan_jax.faces.paste\n'
    'from sdgan_jax.faces import detect\n'
    "try:\n  detect.FaceDetector()\nexcept ImportError as e:\n  print('ERR', e)\n"
  )
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert 'ERR' in result.stdout and 'dlib-bin' in result.stdout, result.stdout


def test_one_detector_serves_several_threads_at_once(photos, hog, tmp_path):
  """dlib's detectors are not thread-safe (two threads in one HOG detector crash the
  process); a FaceDetector used from several threads gives the results of serial calls.
  Run in a child process, so that a crash fails this test instead of killing the session."""
  images = [photos[name] for name in sorted(photos)]
  np.savez(tmp_path / 'images.npz', *images)
  code = textwrap.dedent("""
      import sys
      from concurrent.futures import ThreadPoolExecutor
      import numpy as np
      from sdgan_jax.faces import detect
      with np.load(sys.argv[1]) as f:
        images = [f[f'arr_{i}'] for i in range(len(f.files))]
      hog = detect.FaceDetector('hog', upsample=0)
      with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda image: hog(image).boxes, images * 3))
      np.savez(sys.argv[2], *found)
      """)
  result = subprocess.run(
    [sys.executable, '-c', code, str(tmp_path / 'images.npz'), str(tmp_path / 'found.npz')],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert result.returncode == 0, (
    f'exit status {result.returncode} (-11: segmentation fault)\n{result.stderr[-3000:]}'
  )
  with np.load(tmp_path / 'found.npz') as f:
    found = [f[f'arr_{i}'] for i in range(len(f.files))]
  expected = [hog(image).boxes for image in images] * 3
  assert len(found) == len(expected)
  for got, want in zip(found, expected):
    assert len(want) >= 1
    np.testing.assert_array_equal(got, want)


# --- alignment -----------------------------------------------------------------------------


def test_umeyama_matches_skimage_similarity_estimate():
  from skimage import transform  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  src = rng.uniform(0, 500, (3, 2))
  dst = rng.uniform(0, 128, (3, 2))
  if hasattr(transform.SimilarityTransform, 'from_estimate'):  # scikit-image >= 0.26
    ref = transform.SimilarityTransform.from_estimate(src, dst)
  else:
    ref = transform.SimilarityTransform()
    assert ref.estimate(src, dst)
  np.testing.assert_allclose(align.umeyama(src, dst), ref.params[:2], atol=1e-9)
  # An exact similarity is recovered exactly.
  angle, scale, shift = 0.3, 0.25, np.array([7.0, -3.0])
  rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  np.testing.assert_allclose(
    align.umeyama(src, src @ rot.T + shift), np.column_stack([rot, shift]), atol=1e-9
  )


@pytest.mark.parametrize('resolution, tol_px', [(64, 1.0), (128, 2.0)])
def test_alignment_puts_the_eyes_on_the_canonical_positions(photos, found, resolution, tol_px):
  target = align.canonical_points(resolution)
  np.testing.assert_allclose(
    target[:2],
    [
      [0.3875 * resolution - 0.5, 0.42 * resolution - 0.5],
      [0.6125 * resolution - 0.5, 0.42 * resolution - 0.5],
    ],
  )
  for name, image in photos.items():
    _, points = found[name]
    face = align.align_face(image, points, resolution)
    assert face.crop.shape == (resolution, resolution, 3) and face.crop.dtype == np.uint8
    assert face.matrix.shape == (2, 3) and face.landmarks.shape == (68, 2)
    a = face.matrix[:, :2]
    np.testing.assert_allclose(a[0, 0], a[1, 1], rtol=1e-9)  # a similarity, no reflection
    np.testing.assert_allclose(a[0, 1], -a[1, 0], rtol=1e-9, atol=1e-12)
    eyes = lm.eye_centres(face.landmarks)
    err = np.linalg.norm(eyes - target[:2], axis=-1)
    assert np.all(err <= tol_px), (name, resolution, err)
    # Round trip: crop landmarks mapped back land on the image landmarks.
    back = align.apply_matrix(align.invert_matrix(face.matrix), face.landmarks)
    np.testing.assert_allclose(back, points, atol=1e-3)


def test_aligned_pixels_show_the_eyes_where_the_matrix_says(photos, found, predictor):
  # The 68-point model re-run on the 128-px crop itself finds the eyes at the canonical spots.
  crop_detector = detect.FaceDetector('hog', upsample=1)
  target = align.canonical_points(128)[:2]
  for name, image in photos.items():
    crop = align.align_face(image, found[name][1], 128).crop
    dets = crop_detector(crop)
    assert len(dets) >= 1, name
    eyes = lm.eye_centres(predictor(crop, dets.boxes[0]))
    err = np.linalg.norm(eyes - target, axis=-1)
    assert np.all(err < 3.0), (name, err)


def test_rotated_photo_gives_the_same_crop(photos, found, hog, predictor):
  from skimage import transform  # pylint: disable=import-outside-toplevel

  image = photos['astronaut']
  rotated = transform.rotate(image, 20, resize=True, mode='edge', order=1)
  rotated = np.round(rotated * 255).astype(np.uint8)
  dets = hog(rotated)
  assert len(dets) == 1
  a = align.align_face(image, found['astronaut'][1], 128)
  b = align.align_face(rotated, predictor(rotated, dets.boxes[0]), 128)
  turn = np.degrees(
    np.arctan2(b.matrix[1, 0], b.matrix[0, 0]) - np.arctan2(a.matrix[1, 0], a.matrix[0, 0])
  )
  assert abs(turn - 20) < 1.5, turn  # skimage rotates counter-clockwise, the crop undoes it
  mad = np.abs(a.crop.astype(np.float64) - b.crop).mean()
  # Measured 3.7 grey levels (the landmarks move ~0.3 px); another face's crop is ~10x that.
  other = align.align_face(photos['biden'], found['biden'][1], 128).crop
  assert mad < 6.0, mad
  assert np.abs(a.crop.astype(np.float64) - other).mean() > 5 * mad


# --- masks and semantic maps ---------------------------------------------------------------


@pytest.mark.parametrize('resolution', [64, 128])
def test_mask_covers_the_face_and_not_the_corners(photos, found, resolution):
  for name, image in photos.items():
    face = align.align_face(image, found[name][1], resolution)
    mask = masks.face_mask(face.landmarks, resolution)
    assert mask.shape == (resolution, resolution, 1) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    pts = np.round(face.landmarks).astype(int)
    ok = (pts >= 0).all(1) & (pts < resolution).all(1)
    assert ok[17:].all(), name  # everything but maybe the jaw sides is inside the crop
    assert np.all(mask[pts[ok, 1], pts[ok, 0], 0] == 1), name
    m = mask[..., 0]
    assert m[0, 0] == m[0, -1] == m[-1, 0] == m[-1, -1] == 0
    assert 0.15 < m.mean() < 0.5, (name, m.mean())
    # Same region as PIL's polygon fill (an independent rasteriser), up to the outline.
    ref = Image.new('L', (resolution, resolution))
    poly = masks.face_mask_polygon(face.landmarks) + 0.5  # PIL: pixel centres at +0.5
    ImageDraw.Draw(ref).polygon([tuple(p) for p in poly], fill=1)
    ref = np.asarray(ref) > 0
    iou = (ref & (m > 0)).sum() / (ref | (m > 0)).sum()
    assert iou > 0.93, (name, iou)
    # The forehead is in: the mask reaches above the brows by >= 0.4 eye distances.
    iod = np.linalg.norm(np.subtract(*lm.eye_centres(face.landmarks)))
    top = np.nonzero(m.any(1))[0].min()
    assert face.landmarks[17:27, 1].min() - top > 0.4 * iod, name


@pytest.mark.parametrize('resolution', [64, 128])
def test_semantic_map_parts(photos, found, resolution):
  for name, image in photos.items():
    face = align.align_face(image, found[name][1], resolution)
    mask = masks.face_mask(face.landmarks, resolution)
    sem = masks.semantic_map(face.landmarks, resolution, mask)
    assert sem.shape == (resolution, resolution) and sem.dtype == np.uint8
    assert set(np.unique(sem)) == set(range(10)), (name, np.unique(sem))
    masked = np.isin(sem, features.MASKED_CLASSES)
    assert np.all(mask[..., 0][masked] == 1), name  # classes 1-9 inside the mask
    assert np.all(sem[mask[..., 0] == 1] > 0)  # ... and they fill it
    np.testing.assert_array_equal(sem, masks.semantic_map(face.landmarks, resolution))
    centre = {
      c: np.argwhere(sem == CLASS[c]).mean(0) for c in CLASS if c not in ('background', 'hair')
    }  # (row, col)
    for side in ('left', 'right'):
      assert centre[f'{side}_brow'][0] < centre[f'{side}_eye'][0] < centre['nose'][0], name
      # each brow sits over its own eye
      assert abs(centre[f'{side}_brow'][1] - centre[f'{side}_eye'][1]) < 0.1 * resolution
    assert centre['left_eye'][1] < centre['nose'][1] < centre['right_eye'][1], name
    assert centre['nose'][0] < centre['upper_lip'][0] < centre['lower_lip'][0], name
    assert centre['nose'][0] < centre['inner_mouth'][0], name
    # Small parts win over skin and stay small.
    assert (sem == CLASS['skin']).sum() > 0.5 * masked.sum(), name


# --- paste-back ----------------------------------------------------------------------------


def test_paste_back_of_the_original_crop_restores_the_image(photos, found):
  for name, image in photos.items():
    dets, points = found[name]
    x0, y0, x1, y1 = np.maximum(dets.boxes[0].astype(int), 0)
    box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    # A crop holding the face at >= its image resolution round-trips to > 35 dB; at 128 px
    # the large photos' faces lose detail (measured 28.6-32.9 dB).
    scale128 = align.matrix_scale(align.alignment_matrix(points, 128))
    for resolution, min_db in ((128, 27.0), (128 * int(np.ceil(1 / scale128)), 35.0)):
      face, mask, _ = pipeline.prepare_face(image, points, resolution)
      before = image.copy()
      out = paste.paste_back(image, face.crop, face.matrix, mask, feather_px=4)
      np.testing.assert_array_equal(image, before)  # input untouched
      assert out.shape == image.shape and out.dtype == np.uint8
      db = _psnr(out[box], image[box])
      assert db > min_db, (name, resolution, db)


def test_paste_back_of_a_constant_crop_changes_exactly_the_mask(photos, found):
  from scipy import ndimage  # pylint: disable=import-outside-toplevel

  colour = np.array([255, 0, 255], np.uint8)
  feather = 6
  for name in ('astronaut', 'obama2'):
    image = photos[name]
    face = align.align_face(image, found[name][1], 128)
    mask = masks.face_mask(face.landmarks, 128)
    out = paste.paste_back(
      image, np.broadcast_to(colour, (128, 128, 3)), face.matrix, mask, feather_px=feather
    )
    # Reference warped mask: each image pixel looks up its nearest crop pixel.
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    cx, cy = np.round(align.apply_matrix(face.matrix, np.stack([xs, ys], -1))).astype(int).T
    cx, cy = cx.T, cy.T
    valid = (cx >= 0) & (cx < 128) & (cy >= 0) & (cy < 128)
    inside = np.zeros(image.shape[:2], bool)
    inside[valid] = mask[cy[valid], cx[valid], 0] > 0
    core = ndimage.binary_erosion(inside, iterations=2)
    near = ndimage.binary_dilation(inside, iterations=feather + 2)
    assert core.sum() > 1000
    np.testing.assert_array_equal(out[core], np.broadcast_to(colour, out[core].shape))
    np.testing.assert_array_equal(out[~near], image[~near])  # bit for bit
    changed = np.any(out != image, -1)
    assert changed[inside].mean() > 0.99, name
    # The feather band blends: some pixels between the image and the colour.
    band = near & ~inside
    assert 0 < (changed & band).sum() < band.sum(), name


def test_paste_back_accepts_float_crops_and_hard_edges(photos, found):
  image = photos['astronaut']
  face = align.align_face(image, found['astronaut'][1], 64)
  mask = masks.face_mask(face.landmarks, 64)
  a = paste.paste_back(image, face.crop, face.matrix, mask * 255, feather_px=0)
  b = paste.paste_back(image, face.crop.astype(np.float32) / 255, face.matrix, mask[..., 0], 0)
  np.testing.assert_array_equal(a, b)
  assert set(np.unique(paste.feather_alpha(mask[..., 0] > 0, 0))) == {0.0, 1.0}
  with pytest.raises(ValueError, match='does not match'):
    paste.paste_back(image, face.crop, face.matrix, np.ones((32, 32)), 2)


# --- the whole pipeline --------------------------------------------------------------------


def test_prepare_faces_records(photos, hog):
  faces = pipeline.prepare_faces(photos['astronaut'], 128, detector=hog)
  assert len(faces) == 1
  f = faces[0]
  assert not f.too_small
  record = f.record()
  assert record['image'].shape == (128, 128, 3) and record['image'].dtype == np.uint8
  assert record['mask'].shape == (128, 128, 1) and set(np.unique(record['mask'])) == {0, 255}
  assert record['semantic'].shape == (128, 128, 1)
  assert record['semantic'].max() < features.NUM_CLASSES
  assert record['landmarks'].shape == (68, 2) and record['landmarks'].dtype == np.float32
  assert f.matrix.shape == (2, 3) and f.box.shape == (4,) and f.score > 0


def test_too_small_faces_are_flagged_not_dropped(photos):
  image = photos['astronaut']
  small = np.asarray(Image.fromarray(image).resize((205, 205), Image.LANCZOS))
  faces = pipeline.prepare_faces(small, 128, detector=detect.FaceDetector('hog', upsample=2))
  assert len(faces) >= 1
  best = faces[0]
  width = best.box[2] - best.box[0] + 1
  assert width < pipeline.DEFAULT_MIN_FACE_PX, width
  assert best.too_small
  assert best.crop.shape == (128, 128, 3)  # still prepared, for the caller to decide
