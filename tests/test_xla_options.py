"""``sdgan_jax.perf.xla_options``: the options reach XLA where they should, and only there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdgan_jax import parallel
from sdgan_jax.perf import xla_options


def test_options_apply_on_cpus_unless_xla_flags_set_them_or_xla_does_not_know_them(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_options.for_platform('cpu', xla_options.CPU_STEP) == xla_options.CPU_STEP
  assert xla_options.for_platform('gpu', xla_options.CPU_STEP) is None
  # An option this XLA build rejects is dropped (XLA itself fails the compile on it).
  with pytest.raises(Exception, match='xla_no_such_option'):
    jax.jit(lambda x: x * 2, compiler_options={'xla_no_such_option': 1})(jnp.ones(2))
  assert not xla_options.known('xla_no_such_option', 1)
  bogus = {'xla_no_such_option': 1, **xla_options.CPU_STEP}
  assert xla_options.for_platform('cpu', bogus) == xla_options.CPU_STEP
  # An explicit $XLA_FLAGS entry wins over the choice made here.
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  assert xla_options.for_platform('cpu', xla_options.CPU_STEP) == xla_options.CPU_NETWORKS
  assert xla_options.unless_in_xla_flags(xla_options.INIT) is None


def test_jitted_steps_and_initialisers_compile_and_run_with_the_options(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  step = lambda s, b: (s + 1, {'total': jnp.sum(b)})
  new, metrics = parallel.jit_step(step, parallel.make_mesh())(jnp.zeros(()), jnp.ones((4, 2)))
  assert float(new) == 1 and float(metrics['total']) == 8
  assert (
    float(parallel.jit_init(lambda k: jax.random.normal(k, (3,)).sum())(jax.random.key(0))) != 0
  )


def _conv_net(x, w):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.tanh(y)


def test_cpu_networks_keep_convolutions_out_of_ynnpack_and_compute_the_same():
  """jaxlib 0.10.2 (pinned in requirements.txt) fuses this convolution into YNNPACK by
  default; ``jit_network`` leaves it to XLA's own kernels (BENCHMARKS.md: faster here)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 64, 64, 32), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 64), np.float32) / 17)
  default = jax.jit(_conv_net).lower(x, w).compile()
  ours = xla_options.jit_network(_conv_net).lower(x, w).compile()
  assert 'ynn_fusion' in default.as_text()  # the default this choice was measured against
  assert 'ynn_fusion' not in ours.as_text()
  assert ' convolution(' in ours.as_text()
  np.testing.assert_allclose(
    np.asarray(ours(x, w)), np.asarray(default(x, w)), rtol=1e-5, atol=1e-5
  )
