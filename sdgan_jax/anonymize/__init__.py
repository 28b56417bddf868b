"""Anonymizing photos and videos: every detected face replaced, or else covered (paper §3).

The paper's procedure for full images (§3, §3.4): crop each face, de-identify the crop with
the generator conditioned on the face's semantic map and another person's identity, paste
it back. Per image (``FaceAnonymizer.process``):

1. detect every face with the detector ensemble (``faces.ensemble``: by default both
   BlazeFace networks over tile pyramids, batched over the images at hand), and prepare it
   through ``faces.pipeline``'s one preparation path: fit 68 landmarks (tilted faces turned
   upright first with the detector's keypoints, ``faces.upright``), align a crop at the
   model's resolution, draw its face mask and semantic map; the images at hand in parallel
   threads (``Options.workers``), as in step 4. A model trained on a face parser's maps
   (its workdir's ``semantic_maps.json``, ``sdgan_jax.semantic_source``) gets that parser's
   maps instead (EAGRNet, paper §3.2): the parser runs on the aligned crops of all faces
   at hand in one batched call; the face mask stays the landmark mask;
2. draw a target identity from the model's identity bank: 'random', 'seeded' (the same for
   the same file, face and seed) or 'farthest' (the bank identity whose mean descriptor is
   farthest from the source face's); a face tracked across video frames keeps its target;
3. generate all faces of the images at hand in fixed-size batches (one compiled program);
4. paste each generated face back inside its mask with a feathered edge.

Fail closed. A face is *anonymized* only if every step worked and a check passed; any
other detected face gets the *fallback* (coarse pixelation of, or a solid fill over, its
face region -- the detection box grown to the face box its keypoints place,
``faces.upright.face_region`` -- enlarged by ``fallback_margin``) and the reason is
reported:

* ``too_small``: the box is under ``min_face_px``;
* ``landmarks_failed``: the shape predictor's points are implausible for the box, or the
  crop cannot be aligned;
* ``mask_misses_face``: the warped face mask does not cover the centre of the box;
* ``parsing_error``: the face parser raised (models trained on parser maps);
* ``generation_error``: the generator raised or returned non-finite values
  (``paste_error``: pasting it back raised);
* ``still_matches_source``: the output face, seen by the identity backbone (dlib's ResNet
  descriptor on dlib's 150-px face chip, docs/weights.md), is within
  ``identity_threshold`` of the source face (dlib's same-person convention: distance < 0.6);
* ``unchanged``: last line of defence: the box's pixels came out identical to the input
  (a solid fill is applied);
* ``tracked_not_detected`` (videos): no detector found a face its track had within
  ``track_cover_frames`` frames before or after (``TrackCoverage``).

With the identity check on, a pixelated face (with landmarks) is itself re-checked: one
that still matches its source is pixelated with half the blocks, down to 2, then filled;
its report row's ``cover`` names what was applied, its ``detail`` why.

Without a checkpoint the classic methods of the paper's tables run on the same path
(``baseline``: 'blur' = Gaussian 17x17, 'pixelate' = 8x8 blocks, 'mask' = solid fill, on
the aligned crop inside the mask), with the same checks and fallback.

Files (``anonymize_paths``): images (JPEG, PNG, WebP, GIF, TIFF; every frame of an
animation or page of a TIFF, through the video path), folders (recursive; the tree is
mirrored under the output folder) and videos; see ``sdgan_jax.media`` for decoding, EXIF
orientation, metadata stripping and atomic writes. Before any work, ``plan_jobs`` refuses an
output (or the report) on an input, on another output or on an existing file (unless
``overwrite``), and unwritable folders; the run then locks its output folder (a second
run into it is refused) and never replaces a file that appears during the run. The run's
JSON report lists, per file, the faces found, anonymized and covered by the fallback (with
reasons and the ``cover`` applied), errors and time, the files in which no face was found
(``no_face_found``), and which semantic maps the model got (``semantic_maps``: 'polygons'
or the parser's fingerprint; null for the baselines).

The modules: ``options`` (``Options``, defaults and limits), ``identity_check`` (the
identity backbone), ``tracking`` (video tracks), ``fallback`` (the cover), ``anonymizer``
(``FaceAnonymizer``), ``loading`` (``build_anonymizer``), ``jobs`` (``plan_jobs``),
``runner`` (``Runner``), ``folder_run`` (``anonymize_paths``), ``report`` (the JSON report),
``cli_flags`` and ``cli`` (the command line, also ``python -m sdgan_jax.anonymize``) and
``beam_pipeline`` with its ``beam_*`` stages (the same on Apache Beam, for whole datasets;
not imported here: apache-beam is the optional ``beam`` extra). Each face is one
``faces.pipeline.Face`` from its
detection to its report row.
"""

from __future__ import annotations

from sdgan_jax.anonymize.anonymizer import FaceAnonymizer
from sdgan_jax.anonymize.fallback import cover
from sdgan_jax.anonymize.folder_run import anonymize_paths
from sdgan_jax.anonymize.identity_check import CHIP_PADDING, CHIP_SIZE, IdentityBackbone
from sdgan_jax.anonymize.jobs import REPORT_NAME, InputError, Job, plan_jobs
from sdgan_jax.anonymize.loading import build_anonymizer
from sdgan_jax.anonymize.options import (
  BASELINE_RESOLUTION,
  BASELINES,
  DEFAULT_IDENTITY_THRESHOLD,
  FALLBACKS,
  FRAMES_PER_BATCH,
  IMAGES_PER_BATCH,
  MAX_AUTO_WORKERS,
  TARGET_MODES,
  Options,
)
from sdgan_jax.anonymize.report import IDENTITY_CHECK_OFF, draw_detections, write_report
from sdgan_jax.anonymize.runner import Interrupted, ReportWriteError, Runner
from sdgan_jax.anonymize.tracking import FaceTracker, TrackCoverage, box_iou
from sdgan_jax.faces.pipeline import Face

__all__ = [
  'BASELINES',
  'BASELINE_RESOLUTION',
  'CHIP_PADDING',
  'CHIP_SIZE',
  'DEFAULT_IDENTITY_THRESHOLD',
  'FALLBACKS',
  'FRAMES_PER_BATCH',
  'Face',
  'FaceAnonymizer',
  'FaceTracker',
  'IDENTITY_CHECK_OFF',
  'IMAGES_PER_BATCH',
  'IdentityBackbone',
  'InputError',
  'Interrupted',
  'Job',
  'MAX_AUTO_WORKERS',
  'Options',
  'REPORT_NAME',
  'ReportWriteError',
  'Runner',
  'TARGET_MODES',
  'TrackCoverage',
  'anonymize_paths',
  'box_iou',
  'build_anonymizer',
  'cover',
  'draw_detections',
  'plan_jobs',
  'write_report',
]
