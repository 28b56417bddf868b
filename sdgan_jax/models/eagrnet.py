"""EAGRNet face parser: the semantic-map extractor of SDGAN (paper §3.2).

SDGAN §3.2 takes its semantic maps from EAGRNet (Te et al., "Edge-aware Graph Representation
Learning and Reasoning for Face Parsing", ECCV 2020). The network has three stages, each
implemented by one module below:

1. feature and edge extraction: a ResNet backbone (``resnet.ResNet``) with a pyramid pooling
   module on its last stage (``PyramidPooling``) and an edge perceiving module on stages 1-3
   (``EdgePerceiving``);
2. edge-aware graph reasoning (``EAGRModule``): pixels are projected onto K vertices with an
   edge-aware projection, reasoned over with a graph convolution (``GraphReasoning``) and
   projected back onto the pixel grid;
3. semantic decoding: a two-way decoder (``ContextDecoder`` and the edge-fusion head in
   ``EAGRNet``) working at the stage-1 resolution.

Shapes follow the package conventions (NHWC). With the default ``dilate_stages`` the last
three stages keep stride 8, so a 128-px face gives the 16x16 pyramid-pooling map and the
32x32 edge map that SDGAN §3.2 quotes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdgan_jax.models.layers import Dtype, imagenet_normalize, norm_layer
from sdgan_jax.models.resnet import ResNet, resnet_kwargs

# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
  """[bins, size] averaging matrix with PyTorch ``AdaptiveAvgPool`` bin edges.

  Bin i covers ``[floor(i*size/bins), ceil((i+1)*size/bins))``, so bins may overlap and a map
  smaller than the number of bins is repeated instead of failing, which tiny test backbones
  need.
  """
  mat = np.zeros((bins, size), np.float32)
  for i in range(bins):
    start = (i * size) // bins
    end = -((-(i + 1) * size) // bins)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool(x: jax.Array, height: int, width: int) -> jax.Array:
  """Adaptive average pooling of an NHWC map to ``height`` x ``width``.

  Written as two small matrix products (static shapes) rather than a loop of slices so that it
  lowers to a couple of dots on any map size.
  """
  _, h, w, _ = x.shape
  ph = jnp.asarray(_adaptive_pool_matrix(h, height), x.dtype)
  pw = jnp.asarray(_adaptive_pool_matrix(w, width), x.dtype)
  return jnp.einsum('ih,jw,bhwc->bijc', ph, pw, x)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of an NHWC map (no anti-aliasing, as ``F.interpolate`` in EAGRNet)."""
  b, h, w, c = x.shape
  if (h, w) == (height, width):
    return x
  return jax.image.resize(x, (b, height, width, c), method='bilinear', antialias=False)


def edge_labels_from_parsing(labels: jax.Array) -> jax.Array:
  """Binary edge map of a parsing label map: 1 where any 4-neighbour has another class.

  Supervises the edge perceiving module (EAGRNet, "Edge Perceiving Module"). Neighbours outside
  the image do not count, so the image border is not an edge by itself; both pixels on either
  side of a class boundary are marked, giving a 2-pixel-wide, symmetric edge.

  Args:
    labels: integer class map [..., H, W].

  Returns:
    int32 map of the same shape, 1 on edges and 0 elsewhere.
  """
  labels = jnp.asarray(labels)
  lead = [(0, 0)] * (labels.ndim - 2)
  # A differing pair marks both of its pixels: pad the pair map on either side along its axis.
  vert = labels[..., 1:, :] != labels[..., :-1, :]
  horiz = labels[..., :, 1:] != labels[..., :, :-1]
  edge = (
    jnp.pad(vert, lead + [(1, 0), (0, 0)])
    | jnp.pad(vert, lead + [(0, 1), (0, 0)])
    | jnp.pad(horiz, lead + [(0, 0), (1, 0)])
    | jnp.pad(horiz, lead + [(0, 0), (0, 1)])
  )
  return edge.astype(jnp.int32)


def vertex_grid(num_vertices: int) -> tuple[int, int]:
  """(rows, cols) of the anchor grid that seeds K = rows * cols graph vertices.

  EAGRNet seeds its vertices from a square grid (4x4 gives K=16); other K use the most square
  factorisation so any K >= 1 is accepted (a prime K gives a 1 x K strip).
  """
  if num_vertices < 1:
    raise ValueError(f'num_vertices must be >= 1, got {num_vertices}')
  rows = max(r for r in range(1, math.isqrt(num_vertices) + 1) if num_vertices % r == 0)
  return rows, num_vertices // rows


def edge_aware_projection(
  proj: jax.Array, edge_prob: jax.Array, grid: tuple[int, int]
) -> jax.Array:
  """Edge-aware pixel-to-vertex projection matrix (EAGRNet, "Edge-aware Graph Reasoning").

  Projection features are first weighted by the edge probability so that the vertex anchors
  summarise the component boundaries, which carry the shape of the facial parts. The anchors
  are the inner ``grid`` cells of an adaptive average pooling to ``grid + 2``, as in EAGRNet:
  the dropped outer ring pools the image border, mostly background in a face crop. Each pixel
  is then assigned to the vertices by a softmax over its similarity to the anchors.

  Args:
    proj: projection features [B, H, W, S].
    edge_prob: edge probability [B, H, W, 1] (or anything that broadcasts to ``proj``).
    grid: (rows, cols) of the anchor grid, K = rows * cols.

  Returns:
    float32 matrix [B, K, H*W]; every column (pixel) sums to 1 over the K vertices.
  """
  b, h, w, s = proj.shape
  rows, cols = grid
  anchors = adaptive_avg_pool(proj * edge_prob, rows + 2, cols + 2)[:, 1:-1, 1:-1, :]
  anchors = anchors.reshape(b, rows * cols, s)
  logits = jnp.einsum('bks,bns->bkn', anchors, proj.reshape(b, h * w, s))
  # Softmax in float32: with bf16 compute the dot products over S channels can be large.
  return jax.nn.softmax(logits.astype(jnp.float32), axis=1)


def project_to_vertices(
  state: jax.Array, projection: jax.Array, normalize: bool = False
) -> jax.Array:
  """Vertex features V = B X: [B, H, W, S] pixels -> [B, K, S] vertices."""
  b, h, w, s = state.shape
  vertices = jnp.einsum('bkn,bns->bks', projection.astype(state.dtype), state.reshape(b, h * w, s))
  return vertices / (h * w) if normalize else vertices


def project_to_pixels(
  vertices: jax.Array, projection: jax.Array, height: int, width: int
) -> jax.Array:
  """Back-projection with the same matrix, X' = B^T V: [B, K, S] -> [B, H, W, S]."""
  pixels = jnp.einsum('bkn,bks->bns', projection.astype(vertices.dtype), vertices)
  return pixels.reshape(vertices.shape[0], height, width, vertices.shape[-1])


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
  """Conv (no bias) -> norm -> optional ReLU, the unit of every EAGRNet head."""

  features: int
  kernel_size: int = 1
  norm: str = 'batch'
  activation: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.kernel_size
    x = nn.Conv(
      self.features,
      (k, k),
      padding=((k // 2, k // 2),) * 2,
      use_bias=False,
      dtype=self.dtype,
      name='conv',
    )(x)
    x = norm_layer(self.norm, self.dtype, train, name='norm')(x)
    return nn.relu(x) if self.activation else x


class PyramidPooling(nn.Module):
  """Pyramid pooling on the last backbone stage (SDGAN §3.2; PSPNet, Zhao et al. 2017).

  Each bin size pools the map to a coarse grid, reduces the channels and is upsampled back;
  the concatenation with the input gives every pixel context at several scales before a 3x3
  bottleneck.
  """

  features: int = 512
  bins: Sequence[int] = (1, 2, 3, 6)
  norm: str = 'batch'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _, h, w, _ = x.shape
    priors = []
    for size in self.bins:
      y = adaptive_avg_pool(x, size, size)
      y = ConvNormAct(self.features, 1, self.norm, dtype=self.dtype, name=f'stage{size}')(y, train)
      priors.append(resize_bilinear(y, h, w))
    y = jnp.concatenate(priors + [x], axis=-1)
    return ConvNormAct(self.features, 3, self.norm, dtype=self.dtype, name='bottleneck')(y, train)


class EdgePerceiving(nn.Module):
  """Edge perceiving module (SDGAN §3.2; EAGRNet, "Edge Perceiving Module").

  Stages 1-3 are reduced to ``features`` channels each; one 3x3 classifier, shared across
  levels so that every level is pushed to encode the same notion of a boundary, gives 2-class
  edge logits per level; the levels are upsampled to the stage-1 size and fused by a 1x1 conv.

  Returns:
    (edge logits [B, H1, W1, 2], edge features [B, H1, W1, 3 * features]); the features feed
    the edge way of the decoder.
  """

  features: int = 256
  norm: str = 'batch'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, stages: Sequence[jax.Array], train: bool = False):
    _, h, w, _ = stages[0].shape
    classifier = nn.Conv(
      2, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name='edge_classifier'
    )
    feats, edges = [], []
    for i, x in enumerate(stages):
      f = ConvNormAct(self.features, 1, self.norm, dtype=self.dtype, name=f'reduce{i + 1}')(
        x, train
      )
      edges.append(resize_bilinear(classifier(f), h, w))
      feats.append(resize_bilinear(f, h, w))
    edge = nn.Conv(2, (1, 1), dtype=self.dtype, name='fuse')(jnp.concatenate(edges, axis=-1))
    return edge, jnp.concatenate(feats, axis=-1)


class GraphReasoning(nn.Module):
  """Graph convolution over the vertices (EAGRNet, "Graph Reasoning"; GloRe, Chen et al. 2019).

  Computes ReLU((I - A_g) V W_g): A_g is a learned adjacency, a 1-D conv of kernel 1 along the
  vertex axis (a dense layer mixing the K vertices), W_g a 1-D conv of kernel 1 along the
  channel axis. Subtracting A_g V from V (a graph-Laplacian-like update) lets the identity path
  carry each vertex through while the adjacency passes messages between them.
  """

  dtype: Dtype = None

  @nn.compact
  def __call__(self, vertices: jax.Array) -> jax.Array:
    num_vertices, channels = vertices.shape[-2:]
    # Dense on the transposed tensor = 1-D conv over the vertex dimension.
    messages = nn.Dense(num_vertices, dtype=self.dtype, name='adjacency')(
      jnp.swapaxes(vertices, -1, -2)
    )
    h = vertices - jnp.swapaxes(messages, -1, -2)
    return nn.relu(nn.Dense(channels, use_bias=False, dtype=self.dtype, name='state')(h))


class EAGRModule(nn.Module):
  """Edge-aware graph reasoning module (SDGAN §3.2; EAGRNet, "Edge-aware Graph Reasoning").

  Pixel features are projected onto K vertices with the edge-aware projection
  (``edge_aware_projection``), reasoned over with ``GraphReasoning``, projected back with the
  same matrix and added to the input through a 1x1 conv and a norm (residual), so the output
  has the input's shape.
  """

  num_vertices: int = 16
  state_features: int | None = None  # default: input channels // 4
  normalize: bool = False
  norm: str = 'batch'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, edge_logits: jax.Array, train: bool = False) -> jax.Array:
    _, h, w, c = x.shape
    s = self.state_features or max(c // 4, 1)
    # The edge map steers the projection only; its own supervision comes from the edge loss,
    # so no parsing gradient flows back into it (``edge.detach()`` in EAGRNet).
    edge_logits = jax.lax.stop_gradient(resize_bilinear(edge_logits, h, w))
    edge_prob = jax.nn.softmax(edge_logits.astype(jnp.float32), axis=-1)[..., 1:]
    state = nn.Conv(s, (1, 1), dtype=self.dtype, name='state')(x)
    proj = nn.Conv(s, (1, 1), dtype=self.dtype, name='proj')(x)
    projection = edge_aware_projection(
      proj, edge_prob.astype(proj.dtype), vertex_grid(self.num_vertices)
    )
    vertices = project_to_vertices(state, projection, self.normalize)
    vertices = GraphReasoning(dtype=self.dtype, name='gcn')(vertices)
    y = project_to_pixels(vertices, projection, h, w)
    y = nn.Conv(c, (1, 1), use_bias=False, dtype=self.dtype, name='extend')(y)
    y = norm_layer(self.norm, self.dtype, train, name='extend_norm')(y)
    return x + y


class ContextDecoder(nn.Module):
  """Context way of the two-way decoder (SDGAN §3.2; EAGRNet, "Semantic Decoding").

  The refined context is upsampled to the stage-1 size and fused with a thin projection of the
  low-level stage-1 features, which restore the detail lost at stride 8-16.

  Returns:
    (fused features [B, H1, W1, features], auxiliary parsing logits [B, H1, W1, num_classes]).
  """

  num_classes: int
  features: int = 256
  skip_features: int = 48
  norm: str = 'batch'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, context: jax.Array, low: jax.Array, train: bool = False):
    _, h, w, _ = low.shape
    context = ConvNormAct(self.features, 1, self.norm, dtype=self.dtype, name='context')(
      context, train
    )
    context = resize_bilinear(context, h, w)
    low = ConvNormAct(self.skip_features, 1, self.norm, dtype=self.dtype, name='skip')(low, train)
    x = jnp.concatenate([context, low], axis=-1)
    x = ConvNormAct(self.features, 1, self.norm, dtype=self.dtype, name='fuse1')(x, train)
    x = ConvNormAct(self.features, 1, self.norm, dtype=self.dtype, name='fuse2')(x, train)
    return x, nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)


class EAGRNet(nn.Module):
  """EAGRNet face parser (SDGAN §3.2, Fig. 2; Te et al., ECCV 2020).

  Attributes:
    num_classes: parsing classes (11: the Helen-style map of docs/data.md).
    depth: backbone ResNet depth, 18/34/50/101 (EAGRNet uses 101).
    backbone_width: channels of the first backbone stage (64 in torchvision ResNets).
    stage_sizes: blocks per backbone stage, overriding ``depth``'s (the block type still
      follows ``depth``), e.g. (1, 1, 1, 1) for a tiny test network.
    dilate_stages: per stage 2-4, replace its stride by dilation. The default keeps stride 8,
      which gives SDGAN's 16x16 pyramid map at 128 px; EAGRNet itself used (False, False, True).
    num_vertices: K, graph vertices of each EAGR module.
    psp_bins: pyramid pooling bin sizes.
    context_features: channels of the pyramid pooling output (and first EAGR module).
    edge_features: channels per level in the edge perceiving module.
    decoder_features: channels of the decoder (and second EAGR module).
    skip_features: channels the low-level stage-1 features are reduced to.
    dropout_rate: dropout before the final classifier (EAGRNet: 0.1); with a non-zero rate,
      training needs a 'dropout' rng.
    norm: 'batch' (default), 'instance' or 'none'.
    dtype: compute dtype; parameters stay float32 and logits are returned in float32.
  """

  num_classes: int = 11
  depth: int = 101
  backbone_width: int = 64
  stage_sizes: Sequence[int] | None = None
  dilate_stages: Sequence[bool] = (False, True, True)
  num_vertices: int = 16
  psp_bins: Sequence[int] = (1, 2, 3, 6)
  context_features: int = 512
  edge_features: int = 256
  decoder_features: int = 256
  skip_features: int = 48
  dropout_rate: float = 0.0
  norm: str = 'batch'
  dtype: Dtype = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Parses faces.

    Args:
      images: [B, H, W, 3] RGB in [0, 1]; normalised here with the ImageNet mean/std the
        backbone expects.
      train: update batch statistics (``apply(..., mutable=['batch_stats'])``) and dropout.

    Returns:
      dict with float32 logits at the input resolution: ``parsing`` [B, H, W, num_classes]
      (the final, edge-fused prediction), ``parsing_aux`` [B, H, W, num_classes] (context way
      only, for deep supervision as in EAGRNet) and ``edge`` [B, H, W, 2].
    """
    b, h, w, _ = images.shape
    x = imagenet_normalize(images)
    if self.dtype is not None:
      x = x.astype(self.dtype)

    # Stage 1: features and edges (SDGAN §3.2 "feature and edge extraction").
    kwargs = resnet_kwargs(self.depth)
    if self.stage_sizes is not None:
      if len(self.stage_sizes) != 4:
        raise ValueError(f'stage_sizes needs 4 entries, got {self.stage_sizes}')
      kwargs['stage_sizes'] = tuple(self.stage_sizes)
    stages = ResNet(
      width=self.backbone_width,
      norm=self.norm,
      dilate_stages=tuple(self.dilate_stages),
      dtype=self.dtype,
      name='backbone',
      **kwargs,
    )(x, train)
    context = PyramidPooling(
      self.context_features, tuple(self.psp_bins), self.norm, self.dtype, name='psp'
    )(stages[-1], train)
    edge, edge_feats = EdgePerceiving(self.edge_features, self.norm, self.dtype, name='edge')(
      stages[:3], train
    )

    # Stage 2: graph reasoning on the context (SDGAN §3.2 "edge-aware graph reasoning").
    context = EAGRModule(self.num_vertices, norm=self.norm, dtype=self.dtype, name='eagr_context')(
      context, edge, train
    )

    # Stage 3: two-way decoder at the stage-1 size (SDGAN §3.2 "semantic decoding"). The
    # context way fuses the refined context with low-level features; the edge way reasons over
    # its output once more and fuses it with the edge features, whose boundary cues sharpen
    # the component borders, to give the final logits.
    x, aux = ContextDecoder(
      self.num_classes,
      self.decoder_features,
      self.skip_features,
      self.norm,
      self.dtype,
      name='decoder',
    )(context, stages[0], train)
    x = EAGRModule(self.num_vertices, norm=self.norm, dtype=self.dtype, name='eagr_decoder')(
      x, edge, train
    )
    x = jnp.concatenate([x, edge_feats.astype(x.dtype)], axis=-1)
    x = ConvNormAct(self.decoder_features, 1, self.norm, dtype=self.dtype, name='edge_fuse')(
      x, train
    )
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    parsing = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)

    def full_size(logits):
      return resize_bilinear(logits.astype(jnp.float32), h, w)

    return dict(parsing=full_size(parsing), parsing_aux=full_size(aux), edge=full_size(edge))
