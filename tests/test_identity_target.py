"""The generator's identity term pulls its output towards the target person (paper §3.4).

"The generator learns to generate a face with some of the features of the desired
identity": each training example carries an image of its target person, and the
contrastive term labels (output, that image) as the same identity. G is conditioned on
that image's own dlib descriptor, put into the batch by the training loop's
``with_target_identities`` from an identity bank of the photos (docs/training.md). These
tests train the generator alone, against a fixed identity network, on a fixed batch of
real faces.
"""

import faces_fixture
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_fixtures import tiny_config

from sdgan_jax import train, train_step
from sdgan_jax.identity_bank import IdentityBank
from sdgan_jax.models.dlib_resnet import SAME_PERSON_THRESHOLD
from sdgan_jax.networks import Networks, generate

# source photo -> target photo: always another person
PAIRS = [('obama', 'biden'), ('biden', 'astronaut'), ('astronaut', 'obama2'), ('obama3', 'biden')]


def _square(photo: np.ndarray, size: int) -> np.ndarray:
  h, w, _ = photo.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = Image.fromarray(photo[top : top + side, left : left + side])
  return np.asarray(crop.resize((size, size), Image.BICUBIC), np.float32) / 255.0


# the photos as a training split: example order, identity labels
EXAMPLES = ['obama', 'obama2', 'obama3', 'biden', 'astronaut']
LABELS = [0, 0, 0, 1, 2]


@pytest.fixture(scope='module')
def photos_and_bank(download_cache):
  """The photos and an identity bank of them: each photo's dlib descriptor (dlib's own
  network, the feature our port reproduces) and the per-person means."""
  photos = faces_fixture.load_face_photos(download_cache)
  faces = faces_fixture.dlib_faces({n: photos[n] for n in EXAMPLES})
  features = np.stack([faces[n].descriptor for n in EXAMPLES]).astype(np.float32)
  labels = np.array(LABELS)
  bank = IdentityBank(
    means=np.stack([features[labels == k].mean(0) for k in range(3)]),
    counts=np.bincount(labels),
    features=features,
  )
  return photos, faces, bank


@pytest.fixture(scope='module')
def trained(photos_and_bank):
  photos, _, bank = photos_and_bank
  cfg = tiny_config()
  cfg.train.identity_steps, cfg.train.d_steps, cfg.train.g_steps = 0, 0, 1
  cfg.loss.update(
    lambda_adv=0.0, lambda_ssim=0.0, lambda_perceptual=0.0, lambda_l1=0.0, lambda_contrastive=1.0
  )
  cfg.optim.learning_rate = 1e-3
  models = Networks(cfg)
  r, b = cfg.resolution, len(PAIRS)
  rng = np.random.default_rng(0)
  mask = np.zeros((b, r, r, 1), np.float32)
  mask[:, r // 8 : 7 * r // 8, r // 8 : 7 * r // 8] = 1  # most of the crop: the face
  batch = dict(
    image=np.stack([_square(photos[s], r) for s, _ in PAIRS]),
    mask=mask,
    semantic=(rng.integers(1, cfg.num_classes, (b, r, r)) * mask[..., 0]).astype(np.int32),
    pair_image=np.stack([_square(photos[t], r) for _, t in PAIRS]),
    pair_same=np.zeros(b, np.float32),
    target_image=np.stack([_square(photos[t], r) for _, t in PAIRS]),
    target_index=np.array([EXAMPLES.index(t) for _, t in PAIRS]),
  )
  # the training loop's link: each target image's own feature (data.target_feature 'image')
  batch = next(train.with_target_identities(iter([batch]), bank, 'image'))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k != 'target_index'}
  state = train_step.create_train_state(models, jax.random.key(0))

  @jax.jit
  def distances(state, batch):
    """Identity-space distances of each output to its target and to its source."""
    out, _ = generate(
      models.generator, state.generator.params, state.generator.stats, batch, cfg.num_classes
    )
    embed = lambda x: state.identity.run(x)[0]['embedding']
    e_out = embed(out)
    dist = lambda e: jnp.linalg.norm(e_out - e, axis=-1)
    return dist(embed(batch['target_image'])), dist(embed(batch['image'])), out

  before = distances(state, batch)
  step = jax.jit(lambda s, b: train_step.train_step(models, s, b, unroll=True))
  for _ in range(40):
    state, metrics = step(state, batch)
  assert float(metrics['train/all_finite']) == 1.0
  return models, state, batch, before, distances(state, batch)


def test_generator_is_conditioned_on_the_target_images_own_feature(photos_and_bank, trained):
  """The feature G gets for each example is dlib's descriptor of that example's target
  photo, and it carries the target's identity: the three Obama photos' descriptors are one
  person to dlib's threshold, the others another."""
  _, faces, _ = photos_and_bank
  batch = trained[2]
  for i, (_, target) in enumerate(PAIRS):
    np.testing.assert_allclose(batch['target_identity'][i], faces[target].descriptor, atol=1e-6)
  d = lambda a, b: np.linalg.norm(faces[a].descriptor - faces[b].descriptor)
  assert d('obama', 'obama2') < SAME_PERSON_THRESHOLD < d('obama', 'biden')
  assert d('obama3', 'obama') < SAME_PERSON_THRESHOLD < d('astronaut', 'obama')
  # two examples with the same target photo get the same feature; other targets do not
  assert PAIRS[0][1] == PAIRS[3][1]
  np.testing.assert_array_equal(batch['target_identity'][0], batch['target_identity'][3])
  assert np.linalg.norm(batch['target_identity'][0] - batch['target_identity'][1]) > 0.6


def test_output_moves_towards_the_target_person_not_the_source(trained):
  _, state, _, (to_target0, to_source0, _), (to_target, to_source, _) = trained
  to_target0, to_source0 = np.asarray(to_target0), np.asarray(to_source0)
  to_target, to_source = np.asarray(to_target), np.asarray(to_source)
  # every output is much closer to its target than before ...
  assert np.all(to_target < 0.6 * to_target0), (to_target0, to_target)
  # ... and not closer to its source: the pull is towards the target person only (on
  # average: in the fixed, untrained identity space a source that lies near its target,
  # as obama3 near biden, may move a little with it)
  assert np.mean(to_source) > np.mean(to_source0), (to_source0, to_source)
  assert np.all(to_target < to_source), (to_target, to_source)
  # the identity network itself was not trained (identity_steps 0): a fixed space
  assert int(state.step) == 40


def test_two_targets_give_two_different_faces_for_one_input(trained):
  models, state, batch, _, _ = trained
  swapped = dict(
    batch, target_identity=batch['target_identity'][::-1], target_image=batch['target_image'][::-1]
  )
  composites = jax.jit(
    lambda s, b: generate(
      models.generator, s.generator.params, s.generator.stats, b, models.config.num_classes
    )[0]
  )
  a, b = np.asarray(composites(state, batch)), np.asarray(composites(state, swapped))
  inside = np.asarray(batch['mask'][..., 0]) > 0
  # the face region differs visibly between the two targets, the rest is the original
  assert np.mean(np.abs(a - b)[inside]) > 0.01
  np.testing.assert_array_equal(a[~inside], b[~inside])
