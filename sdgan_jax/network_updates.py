"""One update of each SDGAN network, the pieces of the train step (``sdgan_jax.train_step``).

The Siamese identity network on real pairs (contrastive loss, eq. 8), the discriminator
(LSGAN, eq. 2) and the generator (eq. 9 and §3.4); the generator's update is split at its
forward pass (``generator_forward``), so that the step can hand one forward to both the
discriminator and the first generator update. docs/training.md describes the losses and
docs/deviations.md where they differ from the paper. No TensorFlow here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from sdgan_jax import losses
from sdgan_jax.networks import Networks, generate, one_hot

if TYPE_CHECKING:  # the states are the step's; these functions only read and replace them
  from sdgan_jax.train_step import NetState, TrainState


def identity_update(networks: Networks, net: NetState, batch) -> tuple[NetState, dict]:
  """Siamese identity network on real pairs, contrastive loss (eq. 8)."""
  loss_cfg = networks.config.loss

  def loss_fn(params):
    images = jnp.concatenate([batch['image'], batch['pair_image']], axis=0)
    out, new_stats = net.run(images, params=params, train=True)
    e1, e2 = jnp.split(out['embedding'], 2)
    loss = losses.contrastive_loss(
      e1, e2, batch['pair_same'], loss_cfg.contrastive_margin, loss_cfg.contrastive_mode
    )
    return loss, new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  return net.apply_gradients(grads=grads, stats=stats), {'id_contrastive': loss}


def discriminator_update(net: NetState, real, real_onehot, fake, fake_onehot):
  """LSGAN discriminator update, eq. 2: real images and composites, each with its map."""

  def loss_fn(params):
    both = jnp.concatenate([real, fake], axis=0)
    logits, new_stats = net.run(
      both, jnp.concatenate([real_onehot, fake_onehot], axis=0), params=params, train=True
    )
    split = lambda x: jnp.split(x, 2)
    if isinstance(logits, (list, tuple)):
      real_logits, fake_logits = zip(*map(split, logits))
    else:
      real_logits, fake_logits = split(logits)
    return losses.lsgan_d_loss(real_logits, fake_logits), new_stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  return net.apply_gradients(grads=grads, stats=stats), {'d_lsgan': loss}


def generator_forward(networks: Networks, net: NetState, batch):
  """G's training forward pass and its VJP: ``(composite, vjp_fn, new_stats)``.

  One forward serves both the discriminator update (as the fake) and the first generator
  update (through ``vjp_fn``): the step runs G forward once less than if each recomputed it.
  """
  classes = networks.config.num_classes
  return jax.vjp(
    lambda p: generate(networks.generator, p, net.stats, batch, classes, train=True),
    net.params,
    has_aux=True,
  )


G_LOSS_NETWORK_MODES = ('eval', 'train')


def judges_train(config) -> bool:
  """Whether the identity net and D run in training mode inside G's loss
  (``config.train.g_loss_networks``, docs/training.md "The networks inside the generator's
  loss"): 'eval' (default) uses the running batch-norm statistics and leaves D's
  spectral-norm vectors alone; 'train' (the authors') uses batch statistics, with separate
  identity passes for the output and the real image, and advances both networks' statistics
  on every generator update."""
  mode = config.train.get('g_loss_networks', 'eval')
  if mode not in G_LOSS_NETWORK_MODES:
    raise ValueError(
      f'config.train.g_loss_networks={mode!r}: use one of '
      f'{", ".join(map(repr, G_LOSS_NETWORK_MODES))}'
    )
  return mode == 'train'


def reference_features(networks: Networks, state: TrainState, batch) -> dict:
  """What the generator loss compares its output with, fixed while G updates on ``batch``:
  the real images' VGG-16 features (eq. 7) and the identity embeddings (eq. 8) of the
  target person's image and, for the optional push, of the source image. Computed once
  per batch, not once per generator update (the identity net is already updated). With
  the identity net in training mode inside G's loss (``judges_train``) the embeddings are
  left to ``generator_update``: each of its passes advances the running statistics."""
  reference = {}
  weights = losses.LossWeights.from_config(networks.config.loss)
  if weights.perceptual:
    reference['vgg'] = networks.vgg_features(state.perceptual_params, batch['image'])
  if judges_train(networks.config):
    return jax.lax.stop_gradient(reference)
  embed = lambda images: state.identity.run(images)[0]['embedding']
  if weights.contrastive and weights.source_push:
    reference['target'], reference['source'] = jnp.split(
      embed(jnp.concatenate([batch['target_image'], batch['image']])), 2
    )
  elif weights.contrastive:
    reference['target'] = embed(batch['target_image'])
  elif weights.source_push:
    reference['source'] = embed(batch['image'])
  return jax.lax.stop_gradient(reference)


def generator_update(networks: Networks, state: TrainState, batch, forward, reference: dict):
  """Generator update, eq. 9: L_adv(G) + l1*L_SSIM + l2*L_perceptual + l3*L_contrastive.

  ``forward`` is ``generator_forward`` at ``state.generator``: the loss is differentiated
  with respect to the composite and pulled back to G's parameters through its VJP;
  ``reference`` is ``reference_features``. The contrastive term labels (output, target
  person's image) as the *same* identity: G is pulled towards the person whose identity
  feature it was given (paper §3.4), as the authors' code does. The optional
  ``source_push`` term labels (output, source image) as *different*.

  Returns ``(state, metrics)``: ``state`` with the updated generator and, when D and the
  identity net run in training mode here (``judges_train``), their advanced statistics.
  """
  loss_cfg = networks.config.loss
  weights = losses.LossWeights.from_config(loss_cfg)
  onehot = one_hot(batch['semantic'], networks.config.num_classes)
  train = judges_train(networks.config)
  identity = state.identity
  if train and (weights.contrastive or weights.source_push):
    # The authors' order is fake then real; the real passes run first here, so that their
    # embeddings are fixed inputs of the loss. Only the running averages see the order.
    reference = dict(reference)
    for key, images, used in (
      ('target', batch['target_image'], weights.contrastive),
      ('source', batch['image'], weights.source_push),
    ):
      if used:
        out, stats = identity.run(images, train=True)
        reference[key] = jax.lax.stop_gradient(out['embedding'])
        identity = identity.replace(stats=stats)

  def loss_fn(out):
    logits, d_stats = state.discriminator.run(out, onehot, train=train)
    terms = {'adv': losses.lsgan_g_loss(logits)}
    if weights.ssim:
      terms['ssim'] = losses.ssim_loss(out, batch['image'])
    if weights.perceptual:
      terms['perceptual'] = losses.perceptual_loss(
        lambda x: networks.vgg_features(state.perceptual_params, x),
        out,
        batch['image'],
        loss_cfg.get('perceptual_feature_scale', 1.0),
        target_features=reference['vgg'],
      )
    if weights.l1:
      terms['l1'] = losses.l1_loss(out, batch['image'])
    id_stats = identity.stats
    if weights.contrastive or weights.source_push:
      embedded, id_stats = identity.run(out, train=train)
      contrast = lambda other, same: losses.contrastive_loss(
        embedded['embedding'],
        other,
        jnp.full(out.shape[0], same),
        loss_cfg.contrastive_margin,
        loss_cfg.contrastive_mode,
      )
      if weights.contrastive:
        terms['contrastive'] = contrast(reference['target'], 1.0)
      if weights.source_push:
        terms['source_push'] = contrast(reference['source'], 0.0)
    total, metrics = losses.generator_total_loss(terms, weights)
    return total, (metrics, d_stats, id_stats)

  out, vjp_fn, stats = forward
  (_, (metrics, d_stats, id_stats)), grad_out = jax.value_and_grad(loss_fn, has_aux=True)(out)
  (grads,) = vjp_fn(grad_out)
  new_state = state.replace(
    generator=state.generator.apply_gradients(grads=grads, stats=stats),
    discriminator=state.discriminator.replace(stats=d_stats),
    identity=identity.replace(stats=id_stats),
  )
  return new_state, {f'g_{k}': v for k, v in metrics.items()}
