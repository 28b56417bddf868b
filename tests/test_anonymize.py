"""The anonymizer (paper §3: crop each face, de-identify it, paste it back), end to end.

Real faces (the face-recognition sdist's photos and scikit-image's astronaut) go through
the CLI on a collage (several faces on one canvas, one of them tiny), the same collage
stored rotated with an EXIF orientation tag and GPS/XMP metadata, single faces in
grayscale, 16-bit, RGBA, CMYK and WebP files, broken files, and a short video with sound.
The model is an untrained 32-px generator (``train_fixtures``): its faces are noise, which
is all these plumbing checks need; the identity backbone is the real dlib ResNet port.

References are independent of the code under test: faces are located with dlib's own
detector on pixels the tests decode themselves, metadata is read back with Pillow, frames
are counted with imageio.
"""

import dataclasses
import io
import json
import pathlib
import shutil
import subprocess
import threading

import dlib
import faces_fixture
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import train_fixtures
from PIL import Image
from tool_loader import load_tool

from sdgan_jax import anonymize, identity_bank, media
from sdgan_jax.converters import dlib_resnet as dlib_conv
from sdgan_jax.faces import ensemble

TILE = 160  # face tiles: face boxes of ~80 px
TINY = 88  # the tiny face's tile: a ~45 px box, under the test's --min_face_px
MIN_FACE_PX = 60
GRAY = 128  # --fallback fill's colour (solid_fill 0.5)


def _cli():
  return load_tool('anonymize')


def dlib_boxes(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
  """Faces by dlib's HOG detector at upsample 1, as (x0, y0, x1, y1) exclusive ends."""
  rects = dlib.get_frontal_face_detector()(np.ascontiguousarray(rgb), 1)
  h, w = rgb.shape[:2]
  return [
    (max(r.left(), 0), max(r.top(), 0), min(r.right() + 1, w), min(r.bottom() + 1, h))
    for r in rects
  ]


def region_change(a: np.ndarray, b: np.ndarray, box) -> float:
  x0, y0, x1, y1 = box
  return float(
    np.abs(a[y0:y1, x0:x1].astype(np.float32) - b[y0:y1, x0:x1].astype(np.float32)).mean()
  )


def face_tile(photo: np.ndarray, size: int) -> np.ndarray:
  """A square crop around the photo's largest face (twice the box), resized to ``size``."""
  scale = 600 / max(photo.shape[:2])
  small = np.asarray(
    Image.fromarray(photo).resize(
      (round(photo.shape[1] * scale), round(photo.shape[0] * scale)), Image.BILINEAR
    )
  )
  rects = dlib.get_frontal_face_detector()(small, 1)
  r = max(rects, key=lambda r: r.area())
  cx, cy, half = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2, r.width()
  box = [int(v / scale) for v in (cx - half, cy - half * 0.9, cx + half, cy + half * 1.1)]
  crop = Image.fromarray(photo).crop(box)
  return np.asarray(crop.resize((size, size), Image.LANCZOS))


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory, blazeface_weights, download_cache):
  """dlib's ResNet descriptor and the BlazeFace detectors in one weights folder."""
  root = tmp_path_factory.mktemp('anon_dlib_resnet')
  dlib_conv.fetch_and_convert(download_cache, root / 'weights')
  for path in blazeface_weights[0].iterdir():
    shutil.copy(path, root / 'weights' / path.name)
  return root / 'weights'


@pytest.fixture(scope='module')
def tiles(download_cache):
  photos = faces_fixture.load_face_photos(download_cache)
  return {name: face_tile(photos[name], TILE) for name in ('obama', 'biden', 'astronaut')} | {
    'tiny': face_tile(photos['obama2'], TINY),
    'obama3': face_tile(photos['obama3'], TILE),
  }


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  rng = np.random.default_rng(0)
  bank = identity_bank.IdentityBank(
    means=rng.normal(size=(4, 128)).astype(np.float32) * 0.1, counts=np.ones(4, np.int64)
  )
  return train_fixtures.write_untrained_workdir(
    tmp_path_factory.mktemp('anon_workdir'), train_fixtures.tiny_config(32), bank
  )


def make_collage(tiles) -> tuple[np.ndarray, dict]:
  """Three faces and a tiny one on a 560x220 canvas; name -> tile box (x0, y0, x1, y1)."""
  canvas = np.full((220, 560, 3), 200, np.uint8)
  canvas[:, :, 2] = 170
  places = {
    'obama': (10, 30),
    'biden': (190, 20),
    'astronaut': (370, 40),
    'tiny': (560 - TINY - 4, 220 - TINY - 4),
  }
  boxes = {}
  for name, (x, y) in places.items():
    tile = tiles[name]
    canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    boxes[name] = (x, y, x + tile.shape[1], y + tile.shape[0])
  return canvas, boxes


def write_video(path: pathlib.Path, frames: list, fps: int = 6) -> None:
  """Encodes frames with a sine-tone audio track, using imageio-ffmpeg's ffmpeg directly."""
  silent = path.with_name('silent_' + path.name)
  writer = imageio_ffmpeg.write_frames(
    str(silent), frames[0].shape[1::-1], fps=fps, macro_block_size=1, quality=9
  )
  writer.send(None)
  for f in frames:
    writer.send(np.ascontiguousarray(f))
  writer.close()
  subprocess.run(
    [
      imageio_ffmpeg.get_ffmpeg_exe(),
      '-y',
      '-loglevel',
      'error',
      '-i',
      str(silent),
      '-f',
      'lavfi',
      '-i',
      f'sine=frequency=440:duration={len(frames) / fps}',
      '-c:v',
      'copy',
      '-c:a',
      'aac',
      '-shortest',
      '-metadata',
      'title=secret place',
      str(path),
    ],
    check=True,
  )
  silent.unlink()


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory, tiles, workdir, weights_dir):
  """One CLI run over every kind of input; returns the paths, references and report."""
  cli = _cli()

  root = tmp_path_factory.mktemp('anon_cli')
  inp, out = root / 'in', root / 'out'
  (inp / 'rotated').mkdir(parents=True)
  (inp / 'formats').mkdir()
  (inp / 'bad').mkdir()
  collage, tile_boxes = make_collage(tiles)
  Image.fromarray(collage).save(inp / 'collage.jpg', quality=95)

  # The collage stored sideways: pixels turned 90 degrees clockwise, EXIF orientation 8
  # ("rotate 90 CW to display"... i.e. the viewer turns it back upright), plus GPS,
  # a description and XMP that must not reach the output.
  stored = np.ascontiguousarray(np.rot90(collage, k=-1))
  exif = Image.Exif()
  exif[0x0112] = 8
  exif[0x010E] = 'taken at home'
  exif[0x8825] = {1: 'N', 2: (48.0, 51.0, 30.0), 3: 'E', 4: (2.0, 17.0, 40.0)}
  xmp = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
    b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' dc:creator="Secret Photographer"/></rdf:RDF></x:xmpmeta>'
  )
  Image.fromarray(stored).save(inp / 'rotated' / 'collage_exif.jpg', quality=95, exif=exif, xmp=xmp)

  face = tiles['obama3']
  formats = inp / 'formats'
  Image.fromarray(face).convert('L').save(formats / 'gray.png')
  gray16 = np.asarray(Image.fromarray(face).convert('L')).astype(np.uint16) * 257
  Image.fromarray(gray16).save(formats / 'gray16.png')
  alpha = np.tile(np.linspace(40, 255, TILE).astype(np.uint8), (TILE, 1))
  Image.fromarray(np.dstack([face, alpha]), 'RGBA').save(formats / 'rgba.png')
  Image.fromarray(face).convert('CMYK').save(formats / 'cmyk.jpg', quality=95)
  Image.fromarray(face).save(formats / 'face.webp', quality=95)

  good = io.BytesIO()
  Image.fromarray(tiles['biden']).save(good, 'JPEG', quality=90)
  (inp / 'bad' / 'truncated.jpg').write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
  (inp / 'bad' / 'empty.jpg').write_bytes(b'')
  (inp / 'bad' / 'text.jpg').write_text('this is not a photo\n')
  (inp / 'bad' / 'notes.txt').write_text('not media: skipped\n')

  frames = []
  video_face = np.asarray(Image.fromarray(tiles['astronaut']).resize((96, 96), Image.LANCZOS))
  for k in range(6):  # the face drifts 2 px a frame
    frames.append(np.roll(video_face, shift=2 * k - 5, axis=1))
  write_video(inp / 'clip.mp4', frames)

  before = {p: p.read_bytes() for p in inp.rglob('*') if p.is_file()}
  code = cli.main(
    [
      str(inp),
      '--output',
      str(out),
      '--checkpoint',
      str(workdir),
      '--weights_dir',
      str(weights_dir),
      '--fallback',
      'fill',
      '--min_face_px',
      str(MIN_FACE_PX),
      '--no_progress',
      '--visualize',
    ]
  )
  report = json.loads((out / anonymize.REPORT_NAME).read_text())
  return dict(
    inp=inp,
    out=out,
    code=code,
    report=report,
    collage=collage,
    tiles=tile_boxes,
    face=face,
    frames=frames,
    before=before,
    entries={pathlib.Path(e['input']).relative_to(inp).as_posix(): e for e in report['files']},
  )


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_every_detected_face_in_the_collage_is_changed(cli_run):
  collage = cli_run['collage']
  output = np.asarray(Image.open(cli_run['out'] / 'collage.jpg').convert('RGB'))
  assert output.shape == collage.shape
  boxes = dlib_boxes(collage)
  assert len(boxes) >= 4, boxes  # three faces and the tiny one
  for box in boxes:
    assert region_change(collage, output, box) > 12, box
  # Outside the faces the photo is kept (up to JPEG re-encoding).
  assert np.abs(output[:, :8].astype(int) - collage[:, :8]).mean() < 3
  entry = cli_run['entries']['collage.jpg']
  assert entry['status'] == 'ok' and entry['faces_found'] == len(boxes)
  assert entry['anonymized'] + entry['fallbacks'] == entry['faces_found']
  assert entry['anonymized'] >= 1  # the generator path, not only the fallback, ran
  # A workdir without semantic_maps.json (older runs) was trained on landmark polygons.
  assert cli_run['report']['semantic_maps'] == 'polygons'


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_tiny_face_is_covered_by_the_fallback(cli_run):
  output = np.asarray(Image.open(cli_run['out'] / 'collage.jpg').convert('RGB'))
  entry = cli_run['entries']['collage.jpg']
  tx0, ty0, tx1, ty1 = cli_run['tiles']['tiny']
  small = [f for f in entry['faces'] if f.get('reason') == 'too_small']
  assert len(small) == 1, entry['faces']
  x0, y0, x1, y1 = small[0]['box']
  assert tx0 <= (x0 + x1) / 2 <= tx1 and ty0 <= (y0 + y1) / 2 <= ty1
  # --fallback fill: the whole detected box is one flat grey (up to JPEG noise).
  region = output[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].astype(np.float32)
  assert abs(region.mean() - GRAY) < 3 and region.std() < 3


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_exif_orientation_applied_and_metadata_stripped(cli_run):
  src = cli_run['inp'] / 'rotated' / 'collage_exif.jpg'
  dst = cli_run['out'] / 'rotated' / 'collage_exif.jpg'
  with Image.open(src) as im:  # the input really carries what must not leave
    assert im.getexif()[0x0112] == 8 and 0x8825 in im.getexif() and 'xmp' in im.info
  with Image.open(dst) as im:
    assert im.size == (560, 220)  # upright: the orientation was applied
    assert len(im.getexif()) == 0
    assert 'xmp' not in im.info and 'exif' not in im.info
    upright = np.asarray(im.convert('RGB'))
  data = dst.read_bytes()
  for marker in (b'Exif\x00\x00', b'Secret Photographer', b'taken at home', b'xmpmeta'):
    assert marker not in data
  # The faces were found after turning the photo upright, and all of them changed.
  collage = cli_run['collage']
  boxes = dlib_boxes(collage)
  for box in boxes:
    assert region_change(collage, upright, box) > 12, box
  entry = cli_run['entries']['rotated/collage_exif.jpg']
  assert entry['exif_orientation_applied'] and entry['faces_found'] == len(boxes)


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_image_modes_round_trip_and_faces_change(cli_run):
  out = cli_run['out'] / 'formats'
  face = cli_run['face']
  gray_ref = np.asarray(Image.fromarray(face).convert('L'))
  boxes = dlib_boxes(face)
  assert boxes
  expected_modes = {
    'gray.png': 'L',
    'gray16.png': 'L',
    'rgba.png': 'RGBA',
    'cmyk.jpg': 'RGB',
    'face.webp': 'RGB',
  }
  for name, mode in expected_modes.items():
    entry = cli_run['entries'][f'formats/{name}']
    assert entry['status'] == 'ok' and entry['faces_found'] >= 1, entry
    with Image.open(out / name) as im:
      assert im.mode == mode, (name, im.mode)
      assert im.format == {'png': 'PNG', 'jpg': 'JPEG', 'webp': 'WEBP'}[name.split('.')[-1]]
      got = np.asarray(im.convert('RGB'))
    ref = np.repeat(gray_ref[..., None], 3, -1) if mode == 'L' else face
    for box in boxes:
      assert region_change(ref, got, box) > 12, (name, box)
  # 16-bit samples were scaled to 8 bits (not clipped at 255): away from the face, the
  # output's gray equals the 8-bit reference.
  with Image.open(out / 'gray16.png') as im:
    assert np.abs(np.asarray(im)[:, :10].astype(int) - gray_ref[:, :10]).max() <= 1
  # RGBA: the alpha channel is written back untouched.
  with Image.open(out / 'rgba.png') as im, Image.open(cli_run['inp'] / 'formats/rgba.png') as src:
    np.testing.assert_array_equal(np.asarray(im)[..., 3], np.asarray(src)[..., 3])


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_broken_files_are_reported_and_the_run_goes_on(cli_run):
  entries = cli_run['entries']
  for name in ('bad/truncated.jpg', 'bad/empty.jpg', 'bad/text.jpg'):
    assert entries[name]['status'] == 'error' and entries[name]['error'], entries[name]
    assert not (cli_run['out'] / name).exists()
  assert entries['bad/notes.txt']['status'] == 'skipped'
  assert not (cli_run['out'] / 'bad' / 'notes.txt').exists()
  assert cli_run['code'] == 1  # some files failed ...
  assert cli_run['report']['totals']['errors'] == 3
  for name in ('collage.jpg', 'rotated/collage_exif.jpg', 'clip.mp4'):  # ... the rest ran
    assert entries[name]['status'] == 'ok' and (cli_run['out'] / name).is_file()
  # Nothing under the input folder changed, and no temporary files were left behind.
  assert {p: p.read_bytes() for p in cli_run['inp'].rglob('*') if p.is_file()} == cli_run['before']
  assert not [p for p in cli_run['out'].rglob('.*') if p.is_file()]
  assert (cli_run['out'] / 'collage.detections.png').is_file()


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_video_keeps_frames_size_and_audio_and_changes_the_face(cli_run):
  src, dst = cli_run['inp'] / 'clip.mp4', cli_run['out'] / 'clip.mp4'
  got = np.stack(list(iio.imiter(dst, plugin='FFMPEG')))
  assert got.shape == (6, 96, 96, 3)
  reader = imageio_ffmpeg.read_frames(str(dst))
  meta = next(reader)
  reader.close()
  assert meta.get('audio_codec'), meta  # the sound track was kept
  assert abs(meta['fps'] - 6) < 0.01
  frames_in = np.stack(list(iio.imiter(src, plugin='FFMPEG')))
  for k in range(6):
    boxes = dlib_boxes(frames_in[k])
    assert boxes, k
    for box in boxes:
      assert region_change(frames_in[k], got[k], box) > 12, (k, box)
  entry = cli_run['entries']['clip.mp4']
  assert entry['frames'] == 6 and entry['faces_found'] >= 6 and entry['tracks'] == 1
  assert b'secret place' not in dst.read_bytes()


@pytest.fixture(scope='module')
def anonymizer(workdir, weights_dir):
  return anonymize.build_anonymizer(
    workdir, weights_dir=weights_dir, options=anonymize.Options(fallback='fill')
  )


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_output_matching_the_source_identity_fails_closed(anonymizer, tiles):
  face = tiles['biden']
  strict = dataclasses.replace(anonymizer.options, identity_threshold=1e6)
  anonymizer.options = strict
  try:
    [(out, faces)] = anonymizer.process([face])
  finally:
    anonymizer.options = dataclasses.replace(strict, identity_threshold=0.6)
  assert faces and all(f.reason == 'still_matches_source' for f in faces)
  assert all(f.identity_distance is not None for f in faces)
  for box in dlib_boxes(face):
    x0, y0, x1, y1 = box
    assert np.all(out[y0:y1, x0:x1] == GRAY)


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_generation_error_fails_closed(anonymizer, tiles, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError('accelerator fell over')

  monkeypatch.setattr(anonymizer.generator, 'generate', broken)
  face = tiles['astronaut']
  [(out, faces)] = anonymizer.process([face])
  assert faces and all(f.status == 'fallback' and f.reason == 'generation_error' for f in faces)
  assert 'accelerator fell over' in faces[0].detail
  for x0, y0, x1, y1 in dlib_boxes(face):
    assert np.all(out[y0:y1, x0:x1] == GRAY)


@pytest.mark.slow  # shares a ~1-2 min CLI run / model restore
def test_video_faces_keep_their_target(anonymizer, tiles):
  tracker = anonymizer.new_video()
  frame = tiles['obama']
  targets = []
  for k in range(3):
    [(_, faces)] = anonymizer.process(
      [np.roll(frame, 3 * k, axis=1)], keys=['v.mp4'], trackers=[tracker]
    )
    targets += [(f.track, f.target) for f in faces if f.status == 'anonymized']
  assert len(targets) == 3 and len(set(targets)) == 1, targets


def test_a_pixelated_face_that_still_matches_is_covered_harder(tiles, weights_dir):
  """Issue 27, 2: the fallback's own output is re-checked; a pixelation that still matches
  the source is made coarser, then a solid fill, and the report says so."""
  identity = anonymize.IdentityBackbone(weights_dir)

  def run(threshold):
    anonymizer = anonymize.FaceAnonymizer(
      baseline='pixelate',
      identity=identity,
      weights_dir=weights_dir,
      options=anonymize.Options(
        detectors=('hog',), workers=1, fallback_blocks=16, identity_threshold=threshold
      ),
    )

    def unchanged(faces, keys, images):  # the "generated" face is the source: it matches
      for face in faces:
        face.output = face.crop.astype(np.float32) / 255.0

    anonymizer._generate = unchanged  # pylint: disable=protected-access
    [(out, faces)] = anonymizer.process([tiles['obama']])
    assert len(faces) == 1 and faces[0].reason == 'still_matches_source'
    return out, faces[0]

  # Every pixelation "still matches" at an impossible threshold: 16, 8, 4, 2 blocks, fill.
  out, face = run(1e6)
  x0, y0, x1, y1 = anonymize.fallback.clip_box(face.region, out.shape)
  assert np.all(out[y0:y1, x0:x1] == GRAY)
  assert face.cover == 'fill' and face.to_json()['cover'] == 'fill'
  for blocks in (16, 8, 4, 2):
    assert f'the cover pixelate{blocks} still matched the source' in face.detail
  # At dlib's threshold 16 blocks are far enough from the source: kept, re-checked.
  _, face = run(0.6)
  assert face.cover == 'pixelate16' and 'still matched' not in face.detail


def test_a_damaged_checkpoint_or_bank_is_one_line(workdir, tmp_path, capsys):
  """Issue 27, 9: truncated files of a workdir name themselves and the fix, exit 2."""
  from sdgan_jax import inference, trainer  # pylint: disable=import-outside-toplevel

  damaged = {}
  for name in ('data', 'metadata', 'bank'):
    damaged[name] = tmp_path / name
    shutil.copytree(workdir, damaged[name])
  step = damaged['data'] / 'checkpoints' / '0' / 'default'
  biggest = max((p for p in step.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  meta = damaged['metadata'] / 'checkpoints' / '0' / 'default' / '_METADATA'
  meta.write_bytes(meta.read_bytes()[:1000])
  bank = damaged['bank'] / 'identity_bank.npz'
  bank.write_bytes(bank.read_bytes()[:500])
  photo = tmp_path / 'a.png'
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
  cli = _cli()
  for name, words in (
    ('data', ['checkpoints/0 cannot be read', 'truncated or damaged']),
    ('metadata', ['checkpoints/0 cannot be read']),
    ('bank', ['identity_bank.npz is not a readable identity bank', 'prepare_data.py']),
  ):
    code = cli.main(
      [
        str(photo),
        '--output',
        str(tmp_path / f'out_{name}'),
        '--checkpoint',
        str(damaged[name]),
        '--detectors',
        'hog',
        '--no_identity_check',
        '--no_progress',
      ]
    )
    err = [
      line
      for line in capsys.readouterr().err.splitlines()
      if not line.startswith('warning: the identity re-check is off')
    ]
    assert code == 2 and len(err) == 1 and err[0].startswith('error: '), (name, err)
    assert all(w in err[0] for w in words), (name, err)
  # Resuming training reads the same files: one line too (run.py exits 2 on it).
  with pytest.raises(inference.CheckpointError, match='cannot be read'):
    trainer.restore_state(str(damaged['metadata']), abstract_state=None)


def test_detection_threads_do_not_change_the_results(tiles, weights_dir, monkeypatch):
  """Images (or frames) are prepared and pasted back in parallel threads (Options.workers):
  outputs, face reports and video tracks are those of one thread."""
  collage, _ = make_collage(tiles)
  frames = [np.roll(tiles['obama'], 3 * k, axis=1) for k in range(3)]
  images = [collage, tiles['biden'], *frames, tiles['astronaut']]
  threads = set()

  def run(workers):
    anonymizer = anonymize.FaceAnonymizer(
      baseline='pixelate',
      options=anonymize.Options(identity_threshold=0, workers=workers),
      weights_dir=weights_dir,
    )
    prepare = anonymizer._prepare  # pylint: disable=protected-access

    def recording(image, found):
      threads.add(threading.current_thread().name)
      return prepare(image, found)

    monkeypatch.setattr(anonymizer, '_prepare', recording)
    tracker = anonymizer.new_video()
    return anonymizer.process(
      images,
      keys=[f'{i}.png' for i in range(len(images))],
      trackers=[None, None, tracker, tracker, tracker, None],
    )

  serial = run(1)
  assert threads == {threading.current_thread().name}
  threads.clear()
  parallel = run(3)
  assert len(threads) > 1 and all(t.startswith('anonymize') for t in threads), threads
  assert sum(len(faces) for _, faces in serial) >= 6
  assert len({f.track for _, faces in serial[2:5] for f in faces}) == 1  # one tracked face
  for (out_s, faces_s), (out_p, faces_p) in zip(serial, parallel):
    np.testing.assert_array_equal(out_s, out_p)
    assert [f.to_json() for f in faces_s] == [f.to_json() for f in faces_p]


def test_a_photo_that_fails_does_not_cost_its_batch_the_outputs(
  tmp_path, tiles, weights_dir, monkeypatch
):
  """A photo whose processing raises is reported as an error and not written; the other
  photos of its batch are processed again one by one and written."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for name in ('astronaut', 'biden', 'obama'):
    Image.fromarray(tiles[name]).save(inputs / f'{name}.png')
  anonymizer = anonymize.FaceAnonymizer(
    baseline='pixelate',
    options=anonymize.Options(identity_threshold=0, workers=1),
    weights_dir=weights_dir,
  )
  prepare = anonymizer._prepare  # pylint: disable=protected-access

  def failing_on_biden(image, found):
    if np.array_equal(image, tiles['biden']):
      raise RuntimeError('detector blew up')
    return prepare(image, found)

  monkeypatch.setattr(anonymizer, '_prepare', failing_on_biden)
  report = anonymize.anonymize_paths(
    [inputs], tmp_path / 'out', anonymizer, progress=False, images_per_batch=3
  )
  entries = {pathlib.Path(e['input']).stem: e for e in report['files']}
  assert entries['biden']['status'] == 'error'
  assert 'detector blew up' in entries['biden']['error']
  assert not (tmp_path / 'out' / 'biden.png').exists()
  for name in ('astronaut', 'obama'):
    assert entries[name]['status'] == 'ok' and entries[name]['anonymized'] >= 1, entries[name]
    written = np.asarray(Image.open(tmp_path / 'out' / f'{name}.png'))
    box = dlib_boxes(tiles[name])[0]
    assert region_change(tiles[name], written, box) > 5


def test_negative_worker_counts_are_refused(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _cli().main(['in.png', '--output', 'out', '--baseline', 'blur', '--workers', '-1'])
  assert exit_info.value.code == 2 and '--workers must be >= 0' in capsys.readouterr().err
  with pytest.raises(ValueError, match='workers must be >= 0'):
    anonymize.Options(workers=-1)


def test_baseline_runs_without_a_checkpoint(tmp_path, tiles, weights_dir):
  cli = _cli()

  Image.fromarray(tiles['biden']).save(tmp_path / 'biden.png')
  code = cli.main(
    [
      str(tmp_path / 'biden.png'),
      '--output',
      str(tmp_path / 'out'),
      '--baseline',
      'pixelate',
      '--no_identity_check',
      '--no_progress',
      '--weights_dir',
      str(weights_dir),
    ]
  )
  assert code == 0
  got = np.asarray(Image.open(tmp_path / 'out' / 'biden.png'))
  boxes = dlib_boxes(tiles['biden'])
  assert boxes
  for box in boxes:
    assert region_change(tiles['biden'], got, box) > 5
  report = json.loads((tmp_path / 'out' / anonymize.REPORT_NAME).read_text())
  assert report['method'] == 'baseline:pixelate' and report['totals']['anonymized'] >= 1
  assert report['semantic_maps'] is None  # the baselines use no semantic maps
  # Which detectors found each face, and the region a fallback would cover.
  [face] = report['files'][0]['faces']
  assert set(face['detectors']) <= set(ensemble.DEFAULT_DETECTORS) and face['detectors']
  assert len(face['region']) == 4
  assert report['options']['detectors'] == list(ensemble.DEFAULT_DETECTORS)


def test_detector_flags_are_checked(capsys):
  for flags, message in (
    (['--detectors', 'hog,ssh'], 'unknown detectors'),
    (['--detector_threshold', 'hog=0.5'], 'not one of --detectors'),
    (['--detector_threshold', 'blazeface_full_range'], 'NAME=SCORE'),
    (['--detector_threshold', 'blazeface_full_range=x'], 'not a number'),
  ):
    with pytest.raises(SystemExit) as exit_info:
      _cli().parse_args(['in.png', '--output', 'out', '--baseline', 'blur', *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err, flags
  args = _cli().parse_args(
    [
      'in.png',
      '--output',
      'out',
      '--baseline',
      'blur',
      '--detectors',
      'hog,blazeface_full_range',
      '--detector_threshold',
      'hog=0.3',
    ]
  )
  assert args.detectors == ('hog', 'blazeface_full_range')
  assert args.detector_thresholds == {'hog': 0.3}


def test_inputs_are_never_overwritten_and_missing_files_name_the_fix(tmp_path, tiles, capsys):
  cli = _cli()

  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(tiles['biden']).save(photos / 'a.jpg')
  original = (photos / 'a.jpg').read_bytes()
  for output in (photos, photos / 'anon'):
    assert cli.main([str(photos), '--output', str(output), '--baseline', 'mask']) == 2
    assert 'inside the input folder' in capsys.readouterr().err
  assert cli.main([str(photos / 'a.jpg'), '--output', str(photos), '--baseline', 'mask']) == 2
  assert 'over the input' in capsys.readouterr().err
  assert (photos / 'a.jpg').read_bytes() == original
  assert sorted(p.name for p in photos.iterdir()) == ['a.jpg']
  # No checkpoint, a missing workdir, missing weights: each error names the command to run.
  assert cli.main([str(photos), '--output', str(tmp_path / 'o1')]) == 2
  assert 'make demo' in capsys.readouterr().err
  assert (
    cli.main(
      [str(photos), '--output', str(tmp_path / 'o2'), '--checkpoint', str(tmp_path / 'nope')]
    )
    == 2
  )
  assert 'run.py --config=configs/demo.py' in capsys.readouterr().err
  assert (
    cli.main(
      [
        str(photos),
        '--output',
        str(tmp_path / 'o3'),
        '--baseline',
        'blur',
        '--weights_dir',
        str(tmp_path / 'no_weights'),
      ]
    )
    == 2
  )
  assert 'fetch_weights.py' in capsys.readouterr().err


def test_read_image_converts_modes_explicitly(tmp_path):
  values = np.array([[0, 257, 32896, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / 'g16.png')
  loaded = media.read_image(tmp_path / 'g16.png')
  assert loaded.grayscale and loaded.rgb.shape == (1, 4, 3)
  np.testing.assert_array_equal(loaded.rgb[0, :, 0], [0, 1, 128, 255])
  cmyk = Image.new('CMYK', (4, 2), (0, 255, 255, 0))  # pure red in CMYK
  cmyk.save(tmp_path / 'c.jpg', quality=100)
  rgb = media.read_image(tmp_path / 'c.jpg').rgb
  assert rgb.shape == (2, 4, 3) and rgb[..., 0].min() > 200 and rgb[..., 1:].max() < 60
  for name, payload in (('zero.jpg', b''), ('text.png', b'hello'), ('trunc.png', None)):
    if payload is None:
      buf = io.BytesIO()
      Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(buf, 'PNG')
      payload = buf.getvalue()[:40]
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(media.UnreadableMediaError):
      media.read_image(tmp_path / name)


def test_face_tracker_follows_overlapping_boxes():
  tracker = anonymize.FaceTracker()
  a = tracker.assign(np.array([[0, 0, 49, 49], [100, 0, 149, 49]]))
  b = tracker.assign(np.array([[104, 2, 153, 51], [3, 1, 52, 50], [300, 300, 340, 340]]))
  assert b[0] == a[1] and b[1] == a[0] and b[2] not in a


def test_keep_exif_copies_camera_tags_only(tmp_path):
  exif = Image.Exif()
  exif[0x010F] = 'ACME camera'
  exif[0x0112] = 6
  exif.get_ifd(0x8769)[0x9003] = '2020:01:01 10:00:00'
  exif.get_ifd(0x8769)[0x927C] = b'vendor serial 1234'
  exif[0x8825] = {1: 'N', 2: (48.0, 51.0, 30.0)}
  Image.fromarray(np.full((8, 6, 3), 90, np.uint8)).save(tmp_path / 'in.jpg', exif=exif)
  loaded = media.read_image(tmp_path / 'in.jpg')
  assert loaded.rgb.shape == (6, 8, 3) and loaded.transposed  # orientation 6 applied
  for keep in (False, True):
    path = media.write_image(tmp_path / f'out_{keep}.jpg', loaded, loaded.rgb, keep_exif=keep)
    with Image.open(path) as im:
      got = im.getexif()
      assert im.size == (8, 6)
      if not keep:
        assert len(got) == 0
      else:
        assert got[0x010F] == 'ACME camera' and got.get(0x0112, 1) == 1
        assert got.get_ifd(0x8769)[0x9003] == '2020:01:01 10:00:00'
        assert 0x8825 not in got and 0x927C not in got.get_ifd(0x8769)
    assert b'vendor serial' not in path.read_bytes()


@pytest.mark.slow  # restores and re-saves a checkpoint
def test_restores_a_workdir_whose_vgg_differs_from_a_random_init(workdir, weights_dir, tmp_path):
  """Runs trained with the converted VGG-16 store convs a random init lacks; the anonymizer
  must still load their generator (the VGG part is never used)."""
  import shutil  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax import inference, train_step, trainer  # pylint: disable=import-outside-toplevel
  from sdgan_jax.networks import Networks  # pylint: disable=import-outside-toplevel

  cfg = inference.load_workdir_config(workdir)
  models = Networks(cfg)
  abstract = jax.eval_shape(
    lambda k: train_step.create_train_state(models, k, None), jax.random.key(0)
  )
  state, _ = trainer.restore_state(str(pathlib.Path(workdir).resolve()), abstract)
  vgg = dict(
    state.perceptual_params, conv5_3={'kernel': jnp.ones((3, 3, 4, 4)), 'bias': jnp.zeros((4,))}
  )
  other = tmp_path / 'trained'
  other.mkdir()
  for name in ('config.json', 'identity_bank.npz'):
    shutil.copy(pathlib.Path(workdir) / name, other / name)
  manager = trainer.checkpoint_manager(cfg, str(other))
  trainer.save_checkpoint(manager, 3, state.replace(perceptual_params=vgg), None)
  manager.wait_until_finished()
  built = anonymize.build_anonymizer(
    other, options=anonymize.Options(identity_threshold=0), weights_dir=weights_dir
  )
  assert built.generator.step == 3
  g = built.generator
  params = g.params if hasattr(g, 'params') else g._params  # pylint: disable=protected-access
  for got, want in zip(
    jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state.ema_params)
  ):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_track_coverage_covers_the_frames_a_tracked_face_is_missed_in():
  """A track seen in frames 0-2 and 6 of 8: with a window of 2 or 3 frames, the gap 3-5 and
  frame 7 after its last sighting are covered (boxes interpolated where both sides are in
  reach); with a window of 0 nothing is."""
  options = anonymize.Options(fallback='fill')
  blank = np.full((40, 200, 3), 10, np.uint8)
  boxes = {0: [10, 10, 19, 19], 1: [12, 10, 21, 19], 2: [14, 10, 23, 19], 6: [50, 10, 59, 19]}
  for window, covered_frames in ((2, {3, 4, 5, 7}), (3, {3, 4, 5, 7}), (0, set())):
    coverage = anonymize.TrackCoverage(window, options)
    out = []
    for k in range(8):
      faces = [anonymize.Face(box=np.array(boxes[k], float), track=7)] if k in boxes else []
      coverage.add(blank, faces, [f.box for f in faces])
      out += coverage.ready()
    out += coverage.ready(final=True)
    assert len(out) == 8
    got = {k for k, (image, _) in enumerate(out) if (image != blank).any()}
    assert got == covered_frames, (window, got)
    assert coverage.covered == len(covered_frames)
    for k in covered_frames:
      faces = out[k][1]
      assert [f.reason for f in faces] == ['tracked_not_detected'] and faces[0].track == 7
    if window == 3:  # frame 4: half way from frame 2's box to frame 6's
      assert out[4][1][0].box == pytest.approx([32, 10, 41, 19])
      assert out[7][1][0].box == pytest.approx(boxes[6])
  with pytest.raises(ValueError, match='track_cover_frames'):
    anonymize.Options(track_cover_frames=-1)


@pytest.mark.slow  # encodes and anonymizes a 10-frame video twice
def test_a_face_the_detectors_miss_in_one_frame_is_covered_by_its_track(
  tmp_path, tiles, weights_dir
):
  frames = [np.ascontiguousarray(np.roll(tiles['obama'], 2 * k, axis=1)) for k in range(10)]
  write_video(tmp_path / 'clip.mp4', frames)
  decoded = np.stack(list(iio.imiter(tmp_path / 'clip.mp4', plugin='FFMPEG')))
  box = dlib_boxes(frames[5])[0]
  results = {}
  for window in (0, 3):
    anonymizer = anonymize.FaceAnonymizer(
      baseline='pixelate',
      weights_dir=weights_dir,
      options=anonymize.Options(identity_threshold=0, track_cover_frames=window),
    )
    detect_many = anonymizer.detector.detect_many
    seen = []

    def blind_in_frame_5(images, map_fn):
      found = detect_many(images, map_fn)
      for i in range(len(images)):
        if len(seen) == 5:  # the detectors miss the face in frame 5
          found[i] = found[i].__class__(
            found[i].boxes[:0], found[i].scores[:0], found[i].keypoints[:0], ()
          )
        seen.append(len(found[i]))
      return found

    anonymizer.detector.detect_many = blind_in_frame_5
    report = anonymize.anonymize_paths(
      [tmp_path / 'clip.mp4'],
      tmp_path / f'out{window}',
      anonymizer,
      progress=False,
      frames_per_batch=4,
    )
    [entry] = report['files']
    got = np.stack(list(iio.imiter(tmp_path / f'out{window}' / 'clip.mp4', plugin='FFMPEG')))
    results[window] = (entry, region_change(decoded[5], got[5], box))
  (entry0, change0), (entry3, change3) = results[0], results[3]
  assert entry0['covered_by_tracking'] == 0 and change0 < 6, results  # passed through as it was
  assert entry3['covered_by_tracking'] == 1 and change3 > 12, results
  assert entry3['frames'] == 10 and entry3['faces_found'] == 9
  assert report['totals']['covered_by_tracking'] == 1


def test_restoring_a_checkpoint_prints_no_orbax_metadata_warning(workdir, caplog):
  """orbax warns "Metadata file does not exist" for the step folders of a restore: harmless,
  and kept from the users (``inference.quiet_orbax``); other warnings still get through."""
  import logging  # pylint: disable=import-outside-toplevel

  from sdgan_jax import inference  # pylint: disable=import-outside-toplevel

  caplog.set_level(logging.WARNING)
  generator = inference.TrainedGenerator.from_workdir(workdir, batch_size=2)
  assert generator.step == 0
  assert 'Metadata file does not exist' not in caplog.text
  with inference.quiet_orbax():
    logging.getLogger('absl').warning('something else')
  assert 'something else' in caplog.text


@pytest.mark.slow  # a model restore and the generator's TensorFlow export
def test_the_cpu_export_path_passes_the_same_fail_closed_checks(
  workdir, weights_dir, tiles, tmp_path, monkeypatch
):
  from sdgan_jax import cpu_export  # pylint: disable=import-outside-toplevel

  monkeypatch.setenv('SDGAN_CPU_EXPORT_CACHE', str(tmp_path))

  built = anonymize.build_anonymizer(
    workdir, weights_dir=weights_dir, options=anonymize.Options(fallback='fill', cpu_backend='xla')
  )
  # the generator alone on the bfloat16 export (the detectors' exports take minutes)
  cpu_export.set_backend('tf_bfloat16')
  try:
    built.generator.network = cpu_export.Network(
      'generator', 'generator', built.generator.generate_fn, num_weights=2
    )
  finally:
    cpu_export.set_backend('auto')
  face = tiles['biden']
  [(out, faces)] = built.process([face])
  assert built.generator.network.runtime == 'tf'
  assert cpu_export.used()['generator'] == 'tf bfloat16'
  assert faces
  for f in faces:  # anonymized only when far enough from the source, else covered
    assert f.identity_distance is not None
    assert (f.reason is None) == (f.identity_distance >= built.options.identity_threshold)
  built.options = dataclasses.replace(built.options, identity_threshold=1e6)
  [(out, faces)] = built.process([face])
  assert faces and all(f.reason == 'still_matches_source' for f in faces)
  for x0, y0, x1, y1 in dlib_boxes(face):
    assert np.all(out[y0:y1, x0:x1] == GRAY)
