"""Reading and writing the anonymizer's photos (Pillow), safely (``sdgan_jax.media``).

JPEG, PNG, WebP, GIF and TIFF in any of Pillow's modes are turned into uint8 RGB [H, W, 3]
pixels the face detector takes (``read_image``):

* the EXIF orientation is applied first (``ImageOps.exif_transpose``), so a face stored
  sideways with an orientation tag is upright when detected, and the output is written
  upright with no tag;
* grayscale ('L', '1', 16-bit 'I;16'/'I') is scaled to 8 bits and repeated over RGB (Pillow's
  own 'I' -> 'RGB' conversion clips 16-bit values at 255 instead of scaling them);
* CMYK JPEGs go through Pillow's CMYK -> RGB conversion (Adobe's inverted CMYK is undone by
  its decoder);
* alpha (RGBA, LA, palette transparency) is split off and written back unchanged: only the
  colour channels carry a face, and all of them are processed even where alpha is 0,
  because hidden colour values are still in the file;
* animations and multi-page files (animated GIF, APNG, animated WebP, multi-page TIFF) are
  read frame by frame (``LoadedImage.frames``, with each frame's duration and the loop
  count) and written back with every frame; an MPO JPEG's extra images (a stereo pair's
  second view, a depth map) are dropped, and the report says so.

What a conversion did (16 bits scaled to 8, a palette expanded, alpha kept, ...) is listed
in ``LoadedImage.notes`` for the report.

Outputs (``write_image``) are new Pillow images built from the pixels, so nothing of the
input's metadata travels unless asked: no EXIF (and so no GPS), no XMP, no comments. Only
the ICC colour profile is kept (it describes the colours, not the person or the place).
``keep_exif`` copies EXIF camera and date tags into a new block: no GPS, no thumbnail of the
original picture (IFD1), no maker note, and the orientation reset. Writes are atomic
(``files.atomic_path``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib

import numpy as np

from sdgan_jax.media.files import UnreadableMediaError, atomic_path

# Pillow's format name for each image extension (the output keeps the input's format).
_FORMATS = {
  '.jpg': 'JPEG',
  '.jpeg': 'JPEG',
  '.png': 'PNG',
  '.webp': 'WEBP',
  '.gif': 'GIF',
  '.tif': 'TIFF',
  '.tiff': 'TIFF',
}
# Formats that hold several frames (animations, pages) and can be written back so.
_MULTI_FRAME_FORMATS = ('PNG', 'WEBP', 'GIF', 'TIFF')
EXIF_ORIENTATION = 0x0112
EXIF_GPS_IFD = 0x8825


@dataclasses.dataclass
class LoadedImage:
  """A decoded photo, upright.

  Attributes:
    rgb: uint8 [H, W, 3] pixels after the EXIF orientation.
    alpha: uint8 [H, W] alpha channel, or None.
    grayscale: the file held no colour (written back as grayscale).
    source_mode: Pillow's mode of the file ('RGB', 'CMYK', 'I;16', ...).
    format: Pillow's format name ('JPEG', 'PNG', 'WEBP').
    icc_profile: the embedded ICC profile bytes, or None.
    exif: the raw EXIF block, or None (only used when the caller keeps EXIF).
    transposed: the EXIF orientation tag rotated or mirrored the stored pixels.
    notes: what the conversion did, for the report ('16-bit samples scaled to 8 bits'...).
    frames: every frame (each a ``LoadedImage``, the first one's pixels are ``rgb``) of an
      animation or multi-page file; None for a single image.
    durations: per frame, its display time in ms (animations), or None.
    loop: the animation's loop count (0: forever), or None when the file sets none.
  """

  rgb: np.ndarray
  alpha: np.ndarray | None = None
  grayscale: bool = False
  source_mode: str = 'RGB'
  format: str = ''
  icc_profile: bytes | None = None
  exif: bytes | None = None
  transposed: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)
  frames: list[LoadedImage] | None = None
  durations: list[int] | None = None
  loop: int | None = None


def _to_uint8(array: np.ndarray) -> np.ndarray:
  """Scales an integer array of 16 (or 32) bit samples to 8 bits."""
  if array.dtype == np.uint8:
    return array
  if array.dtype == np.bool_:
    return array.astype(np.uint8) * 255
  if np.issubdtype(array.dtype, np.floating):
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
  # 16-bit samples (PNG 'I;16', or 'I' holding 0..65535): keep the high byte, rounded.
  return np.clip((array.astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> LoadedImage:
  """Decodes a photo into upright uint8 RGB (module doc); raises UnreadableMediaError."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  try:
    if path.stat().st_size == 0:
      raise UnreadableMediaError(f'{path}: empty file (0 bytes)')
    with Image.open(path) as image:
      image.load()  # decodes now: a truncated file raises here, not half-way through
      fmt = image.format or ''
      icc = image.info.get('icc_profile')
      exif = image.info.get('exif')
      orientation = image.getexif().get(EXIF_ORIENTATION, 1)
      count = getattr(image, 'n_frames', 1)
      loaded = _convert_upright(image, fmt, icc, exif, orientation)
      if count > 1 and fmt not in _MULTI_FRAME_FORMATS:  # MPO: extra views, depth maps
        loaded.notes.append(
          f'the file holds {count} images ({fmt}); only the first is '
          'anonymized and written, the others are dropped'
        )
      elif count > 1:
        loaded = _read_frames(image, loaded, fmt, icc, exif, orientation, count)
      return loaded
  except UnreadableMediaError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    # PIL.UnidentifiedImageError (an OSError) for non-images, OSError for truncated data.
    raise UnreadableMediaError(f'{path}: cannot read the image ({type(e).__name__}: {e})') from e


def _convert_upright(image, fmt: str, icc, exif, orientation) -> LoadedImage:
  """The current frame of ``image``, turned upright by ``orientation`` and converted."""
  from PIL import ImageOps  # pylint: disable=import-outside-toplevel

  upright = ImageOps.exif_transpose(image)
  transposed = upright is not image and upright.size != (0, 0) and (orientation not in (1, None))
  return _convert(upright, fmt, icc, exif, transposed)


def _read_frames(
  image, first: LoadedImage, fmt: str, icc, exif, orientation, count: int
) -> LoadedImage:
  """Every frame of an animation or multi-page file (``first`` is frame 0's)."""
  frames, durations = [], []
  for k in range(count):
    image.seek(k)
    frame = first if k == 0 else _convert_upright(image, fmt, icc, None, orientation)
    frames.append(frame)
    durations.append(int(image.info.get('duration', 0) or 0))
  first.frames = frames
  first.durations = durations if any(durations) else None
  image.seek(0)
  first.loop = image.info.get('loop')
  kind = 'pages' if fmt == 'TIFF' else 'frames'
  first.notes.append(
    f'{count} {kind}, each anonymized'
    + ('' if first.durations is None else ', timing and loop kept')
  )
  for frame in frames[1:]:  # what a later frame's conversion did, once
    for note in frame.notes:
      if note not in first.notes:
        first.notes.append(note)
  return first


def _convert(image, fmt: str, icc, exif, transposed: bool) -> LoadedImage:
  mode = image.mode
  alpha = None
  grayscale = False
  notes = []
  if mode in ('1', 'L', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F'):
    array = np.asarray(image)
    gray = _to_uint8(array)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    grayscale = True
    if mode.startswith('I') or mode == 'F':
      notes.append(f'high-bit-depth samples ({mode}) scaled to 8 bits (written as 8-bit grayscale)')
  elif mode in ('LA', 'La'):
    la = np.asarray(image.convert('LA'))
    rgb, alpha, grayscale = np.repeat(la[..., :1], 3, axis=-1), la[..., 1], True
  elif mode in ('RGBA', 'RGBa', 'PA') or (mode == 'P' and 'transparency' in image.info):
    rgba = np.asarray(image.convert('RGBA'))
    rgb, alpha = rgba[..., :3], rgba[..., 3]
  else:  # RGB, P, CMYK, YCbCr, LAB, HSV, RGBX, 16-bit RGB variants
    rgb = np.asarray(image.convert('RGB'))
    if mode not in ('RGB', 'P'):
      notes.append(f'{mode} converted to RGB (written as RGB)')
  if mode in ('P', 'PA'):
    notes.append(
      'palette image expanded to RGB (written in full colour; GIF outputs get a new palette)'
    )
  if alpha is not None:
    notes.append(
      'alpha channel kept unchanged (the colour under transparent pixels is '
      'anonymized too); formats without alpha drop it'
    )
  return LoadedImage(
    rgb=np.ascontiguousarray(rgb, np.uint8),
    alpha=None if alpha is None else np.ascontiguousarray(alpha, np.uint8),
    grayscale=grayscale,
    source_mode=mode,
    format=fmt,
    icc_profile=icc,
    exif=exif,
    transposed=transposed,
    notes=notes,
  )


EXIF_IFD = 0x8769
EXIF_MAKER_NOTE = 0x927C
# Directories that may hold a copy of the picture (IFD1's thumbnail), the place (GPS) or
# opaque vendor data (maker notes, interoperability): never copied.
_DROPPED_POINTERS = (EXIF_GPS_IFD, 0xA005)


def _exif_without_gps(exif: bytes | None) -> bytes | None:
  """A new EXIF block: IFD0 and the Exif directory's tags, without GPS, thumbnail, maker
  note, and with the orientation set to upright (the pixels are already turned)."""
  if not exif:
    return None
  from PIL import Image  # pylint: disable=import-outside-toplevel

  source = Image.Exif()
  source.load(exif)
  kept = Image.Exif()  # rebuilt tag by tag: IFD1 (the thumbnail of the original) is left out
  for tag, value in source.items():
    if tag in _DROPPED_POINTERS or tag == EXIF_IFD:
      continue
    kept[tag] = value
  if EXIF_ORIENTATION in kept:
    kept[EXIF_ORIENTATION] = 1
  sub = kept.get_ifd(EXIF_IFD)
  for tag, value in source.get_ifd(EXIF_IFD).items():
    if tag != EXIF_MAKER_NOTE and tag not in _DROPPED_POINTERS:
      sub[tag] = value
  return kept.tobytes()


def _pil_image(loaded: LoadedImage, rgb: np.ndarray, fmt: str):
  """A new Pillow image of anonymized pixels in ``loaded``'s colour layout (gray, alpha)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rgb = np.asarray(rgb, np.uint8)
  if loaded.grayscale:
    # The anonymized face is colour; the file was gray: write it gray (ITU-R 601 luma).
    gray = np.clip(
      np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255
    )
    channels = [gray.astype(np.uint8)]
    mode = 'L'
  else:
    channels = [rgb[..., c] for c in range(3)]
    mode = 'RGB'
  if loaded.alpha is not None and fmt in ('PNG', 'WEBP', 'GIF', 'TIFF'):
    channels.append(loaded.alpha)
    mode = 'LA' if mode == 'L' else 'RGBA'
  array = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
  return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def encode_image(
  loaded: LoadedImage, rgb, fmt: str, *, keep_exif: bool = False, quality: int = 95
) -> bytes:
  """Encodes anonymized pixels as a new file in ``fmt`` with no metadata but ICC (module doc).

  ``rgb`` is one uint8 [H, W, 3] array, or for an animation or multi-page file
  (``loaded.frames``) a list of them, one per frame: all are written, with the frames'
  durations and the loop count.
  """
  multi = loaded.frames is not None and isinstance(rgb, (list, tuple))
  if multi:
    if len(rgb) != len(loaded.frames):
      raise ValueError(f'{len(rgb)} frames given for a file of {len(loaded.frames)}')
    images = [_pil_image(frame, out, fmt) for frame, out in zip(loaded.frames, rgb)]
  else:
    images = [_pil_image(loaded, rgb[0] if isinstance(rgb, (list, tuple)) else rgb, fmt)]
  image = images[0]
  if fmt == 'GIF' and image.mode in ('L', 'LA'):  # GIF holds palettes: gray goes as RGB(A)
    images = [im.convert('RGBA' if im.mode == 'LA' else 'RGB') for im in images]
    image = images[0]
  options = {}
  if loaded.icc_profile and fmt != 'GIF':
    options['icc_profile'] = loaded.icc_profile
  if keep_exif:
    exif = _exif_without_gps(loaded.exif)
    if exif:
      options['exif'] = exif
  if fmt == 'JPEG':
    options.update(quality=quality, subsampling=0 if quality >= 90 else -1)
  elif fmt == 'WEBP':
    options.update(quality=quality)
  if len(images) > 1:
    options.update(save_all=True, append_images=images[1:])
    if loaded.durations is not None:
      options['duration'] = list(loaded.durations)
    if loaded.loop is not None:
      options['loop'] = loaded.loop
    if fmt == 'GIF':
      options['disposal'] = 2  # every frame is whole: clear the last one first
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **options)
  return buffer.getvalue()


def write_image(
  dest: str | os.PathLike,
  loaded: LoadedImage,
  rgb,
  *,
  keep_exif: bool = False,
  quality: int = 95,
  replace: bool = True,
) -> pathlib.Path:
  """Writes anonymized pixels (one array, or a list of frames) to ``dest`` atomically, in
  the format its suffix names; an existing ``dest`` is replaced only with ``replace``
  (``atomic_path``)."""
  dest = pathlib.Path(dest)
  fmt = _FORMATS.get(dest.suffix.lower(), loaded.format or 'PNG')
  data = encode_image(loaded, rgb, fmt, keep_exif=keep_exif, quality=quality)
  with atomic_path(dest, replace=replace) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  return dest
