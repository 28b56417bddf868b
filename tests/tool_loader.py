"""Loads a command-line tool of tools/ as a module (tools/ is not a package)."""

import importlib.util
import pathlib

TOOLS = pathlib.Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name: str):
  """``tools/NAME.py`` as a fresh module, so a test can call its ``main``/``parse_args``."""
  spec = importlib.util.spec_from_file_location(f'{name}_tool', TOOLS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
