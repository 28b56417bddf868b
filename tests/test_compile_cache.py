"""The entry points' persistent compilation cache: a second process loads, not compiles."""

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import jax, jax.numpy as jnp
    from sdgan_jax.perf import compile_cache
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    print('dir', compile_cache.enable(None if sys.argv[2] == 'default' else sys.argv[2]))
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    f(jnp.ones((64, 64))).block_until_ready()
    print('hits', sum('compilation_cache/cache_hits' in e for e in events))
""")


def _run(tmp_path, directory):
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(
    XDG_CACHE_HOME=str(tmp_path / 'xdg'),
    JAX_PLATFORMS='cpu',
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  script = tmp_path / 'cache_probe.py'
  script.write_text(SCRIPT)
  out = subprocess.run(
    [sys.executable, str(script), str(REPO), directory],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  lines = dict(line.split(' ', 1) for line in out.stdout.splitlines() if ' ' in line)
  return lines['dir'], int(lines['hits'])


def test_second_process_loads_the_compiled_program_from_the_default_cache(tmp_path):
  directory, hits = _run(tmp_path, 'default')
  assert directory == str(tmp_path / 'xdg' / 'sdgan_jax' / 'xla')
  assert hits == 0 and any(pathlib.Path(directory).iterdir()), 'nothing was cached'
  again, hits = _run(tmp_path, 'default')
  assert again == directory and hits >= 1  # the jitted function (and jnp.ones) came from disk


def test_empty_directory_turns_the_cache_off(tmp_path):
  directory, hits = _run(tmp_path, '')
  assert directory == 'None' and hits == 0
  assert not (tmp_path / 'xdg').exists()
