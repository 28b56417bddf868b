"""Reading and writing the anonymizer's photos and videos, safely (the anonymizer's I/O).

* ``files``: which files are photos or videos (by extension), the error for unreadable
  ones, and atomic writes (a temporary file renamed over the destination) with the
  clean-up of the temporaries a killed run leaves, under a lock on the folder
  (``FolderLock``);
* ``images``: photos with Pillow, upright uint8 RGB in, new files with no metadata but the
  ICC profile out (animations and pages frame by frame);
* ``video``: videos with imageio-ffmpeg, rgb24 frames in, H.264/VP9 with the input's audio
  out.

Every public name of the three is importable from here.
"""

from __future__ import annotations

from sdgan_jax.media.files import (
  IMAGE_EXTENSIONS,
  LOCK_NAME,
  TEMP_MARKER,
  TEMP_PATTERN,
  VIDEO_EXTENSIONS,
  DestinationExistsError,
  FolderBusyError,
  FolderLock,
  UnreadableMediaError,
  atomic_path,
  check_not_locked,
  check_writable,
  media_kind,
  remove_stale_temporaries,
)
from sdgan_jax.media.images import (
  EXIF_GPS_IFD,
  EXIF_IFD,
  EXIF_MAKER_NOTE,
  EXIF_ORIENTATION,
  LoadedImage,
  encode_image,
  read_image,
  write_image,
)
from sdgan_jax.media.video import VideoInfo, VideoWriter, read_video

__all__ = [
  'DestinationExistsError',
  'EXIF_GPS_IFD',
  'EXIF_IFD',
  'EXIF_MAKER_NOTE',
  'EXIF_ORIENTATION',
  'FolderBusyError',
  'FolderLock',
  'IMAGE_EXTENSIONS',
  'LOCK_NAME',
  'LoadedImage',
  'TEMP_MARKER',
  'TEMP_PATTERN',
  'UnreadableMediaError',
  'VIDEO_EXTENSIONS',
  'VideoInfo',
  'VideoWriter',
  'atomic_path',
  'check_not_locked',
  'check_writable',
  'encode_image',
  'media_kind',
  'read_image',
  'read_video',
  'remove_stale_temporaries',
  'write_image',
]
