"""The installed package works without the source tree: configs, config checks, the CLI.

A wheel is built from a copy of the checkout's packaging inputs (pyproject.toml, README.md,
LICENSE, sdgan_jax/), so a stale ``build/`` folder of the checkout cannot leak removed
modules into it and the checkout is not written to. It is installed with
``pip install --target`` and imported from another folder with only the install folder on
PYTHONPATH. The venv holds an editable install of the checkout, whose finder comes after
PYTHONPATH on the import path; every snippet asserts that it imported the wheel's copy.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGING_FILES = ('pyproject.toml', 'README.md', 'LICENSE')
CONFIG_NAMES = ('celeba', 'demo', 'eagrnet_folder', 'eagrnet_polygons')


def _run(args, cwd, env=None, timeout=600):
  return subprocess.run(
    args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
  )


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(site folder, wheel path): the package built from the checkout and installed alone."""
  tmp = tmp_path_factory.mktemp('packaging')
  src = tmp / 'src'
  src.mkdir()
  for name in PACKAGING_FILES:
    shutil.copy2(ROOT / name, src / name)
  shutil.copytree(
    ROOT / 'sdgan_jax', src / 'sdgan_jax', ignore=shutil.ignore_patterns('__pycache__', '*.pyc')
  )
  dist = tmp / 'dist'
  built = _run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '--no-deps',
      '--no-build-isolation',
      '--quiet',
      '-w',
      str(dist),
      str(src),
    ],
    cwd=tmp,
  )
  assert built.returncode == 0, f'pip wheel failed:\n{built.stdout}\n{built.stderr}'
  wheels = sorted(dist.glob('sdgan_jax-*.whl'))
  assert len(wheels) == 1, f'expected one wheel in {dist}, found {wheels}'
  site = tmp / 'site'
  done = _run(
    [
      sys.executable,
      '-m',
      'pip',
      'install',
      '--no-deps',
      '--quiet',
      '--target',
      str(site),
      str(wheels[0]),
    ],
    cwd=tmp,
  )
  assert done.returncode == 0, f'pip install --target failed:\n{done.stdout}\n{done.stderr}'
  return site, wheels[0]


def _env(site: pathlib.Path) -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = str(site)
  env.pop('PYTHONSTARTUP', None)
  return env


def _python(installed, tmp_path, code: str):
  """Runs ``code`` in a fresh interpreter in ``tmp_path`` that sees the wheel's copy."""
  site, _ = installed
  prelude = textwrap.dedent(f"""\
      import pathlib, sdgan_jax
      _where = pathlib.Path(sdgan_jax.__file__).resolve()
      assert _where.is_relative_to(pathlib.Path({str(site.resolve())!r})), (
          f'sdgan_jax imported from {{_where}}, not from the installed wheel')
      """)
  return _run([sys.executable, '-c', prelude + textwrap.dedent(code)], cwd=tmp_path, env=_env(site))


def test_wheel_holds_the_reference_configs(installed):
  _, wheel = installed
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  missing = [
    f'sdgan_jax/configs/{n}.py'
    for n in ('__init__',) + CONFIG_NAMES
    if f'sdgan_jax/configs/{n}.py' not in names
  ]
  assert not missing, (
    f'the wheel {wheel.name} lacks the reference configs {missing}: '
    'sdgan_jax/configs must be a package that pyproject.toml includes'
  )


def test_wheel_declares_the_anonymizer_script(installed):
  _, wheel = installed
  with zipfile.ZipFile(wheel) as z:
    entry_points = [n for n in z.namelist() if n.endswith('.dist-info/entry_points.txt')]
    assert entry_points, f'{wheel.name} declares no entry points ([project.scripts])'
    text = z.read(entry_points[0]).decode()
  assert 'sdgan-anonymize = sdgan_jax.anonymize.cli:main' in text, text


def test_installed_package_is_the_wheel_and_not_the_checkout(installed, tmp_path):
  result = _python(
    installed,
    tmp_path,
    f"""\
      assert not _where.is_relative_to(pathlib.Path({str(ROOT)!r})), _where
      print(_where)
      """,
  )
  assert result.returncode == 0, result.stderr


def test_reference_config_loads_and_validates_from_the_wheel(installed, tmp_path):
  result = _python(
    installed,
    tmp_path,
    """\
      from sdgan_jax import configs
      from sdgan_jax.config import load_config
      from sdgan_jax.train import validate_config
      for name in configs.NAMES:
        path = configs.config_path(name)
        assert path.is_file(), f'{path} is not in the installed package'
        assert path.resolve().is_relative_to(_where.parent), path
      config = load_config(str(configs.config_path('celeba')))
      validate_config(config)
      print('validated', config.resolution, config.model.generator.preset)
      """,
  )
  assert result.returncode == 0, f'{result.stdout}\n{result.stderr}'
  assert 'validated 128 paper' in result.stdout


def test_anonymizer_help_runs_from_another_folder(installed, tmp_path):
  site, _ = installed
  if not (site / 'sdgan_jax' / 'anonymize' / 'cli.py').is_file():
    pytest.fail(
      'sdgan_jax/anonymize/cli.py is not in the wheel: `python -m '
      'sdgan_jax.anonymize` and the sdgan-anonymize script need it'
    )
  result = _run(
    [sys.executable, '-m', 'sdgan_jax.anonymize', '--help'], cwd=tmp_path, env=_env(site)
  )
  assert result.returncode == 0, f'{result.stdout}\n{result.stderr}'
  assert 'usage:' in result.stdout.lower(), result.stdout
  script = site / 'bin' / 'sdgan-anonymize'
  assert script.is_file(), f'pip installed no sdgan-anonymize script into {site / "bin"}'
  result = _run([str(script), '--help'], cwd=tmp_path, env=_env(site))
  assert result.returncode == 0, f'{result.stdout}\n{result.stderr}'
  assert 'usage:' in result.stdout.lower(), result.stdout
