"""The authors' three networks (``preset: authors``, ``kind: global``) on a fixed input and
seed give stored output statistics: a regression anchor for their layers.

Shapes, FLOPs and parameter counts (test_generator.py, test_benchmark.py) do not see a
changed activation, normalisation or wiring; these numbers do. They were made once by
running this file (``PYTHONPATH=. python tests/test_authors_numerics.py`` prints them) on
the layers whose outputs were checked against the authors' PyTorch modules with the same
weights (within 1e-5 relative on 2026-12-02, docs/deviations.md "Networks"). A deliberate
change to these layers must repeat that comparison before it regenerates them.
"""

import numpy as np
import pytest

# network -> (mean, std, min, max) of its output on ``_statistics``' inputs, initialised
# from key 0 under the suite's JAX settings (tests/conftest.py: threefry not partitionable,
# 'highest' matmul precision); made 2026-12-07 on JAX 0.10 / Flax 0.12 (CPU).
STORED = {
  'generator': (0.007289694, 0.05570493, -0.7011117, 1.333188),
  'generator_train': (-0.004794024, 0.08016164, -0.5213105, 0.6430799),
  'discriminator': (0.00585522, 0.006297304, -0.0004420839, 0.01215252),
  'identity': (-0.006926598, 0.395921, -1.340597, 1.332516),
}


def _statistics() -> dict[str, tuple[float, float, float, float]]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.configs import celeba  # pylint: disable=import-outside-toplevel
  from sdgan_jax.networks import Networks  # pylint: disable=import-outside-toplevel
  from sdgan_jax.perf import benchmarking  # pylint: disable=import-outside-toplevel

  config = benchmarking.authors_shapes_config(celeba.get_config('authors'))
  models = Networks(config)
  rng = np.random.default_rng(0)
  r, b = config.resolution, 2
  image = jnp.asarray(rng.uniform(size=(b, r, r, 3)), jnp.float32)
  # a blocky map (8-px cells) of the 11 classes, one-hot
  cells = rng.integers(0, config.num_classes, (b, r // 8, r // 8))
  semantic = jax.nn.one_hot(np.kron(cells, np.ones((8, 8), int)), config.num_classes)
  identity = jnp.asarray(rng.normal(size=(b, config.identity_dim)), jnp.float32)
  stats = lambda x: tuple(float(v) for v in (jnp.mean(x), jnp.std(x), jnp.min(x), jnp.max(x)))
  out = {}
  for name, module, args in (
    ('generator', models.generator, (image * 0.5, semantic, identity)),
    ('discriminator', models.discriminator, (image, semantic)),
    ('identity', models.identity, (image,)),
  ):
    variables = jax.jit(module.init)(jax.random.key(0), *args)
    result = jax.jit(module.apply)(variables, *args)
    out[name] = stats(result['embedding'] if name == 'identity' else result)
    if name == 'generator':  # batch norm on the batch's statistics too
      result, _ = jax.jit(lambda v, *a: module.apply(v, *a, train=True, mutable=['batch_stats']))(
        variables, *args
      )
      out['generator_train'] = stats(result)
  return out


@pytest.mark.slow
def test_authors_networks_give_their_stored_statistics():
  assert STORED, 'no stored statistics: run this file to make them'
  got = _statistics()
  assert got.keys() == STORED.keys()
  for name, want in STORED.items():
    np.testing.assert_allclose(got[name], want, rtol=2e-4, atol=1e-6, err_msg=name)


if __name__ == '__main__':
  import conftest  # noqa: F401  pylint: disable=unused-import  (the suite's JAX settings)

  for key, value in _statistics().items():
    print(f'    {key!r}: ({", ".join(f"{v:.7g}" for v in value)}),')
