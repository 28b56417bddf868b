"""Benchmark scripts and the synthetic test sets they and the tests use.

Not part of the installed package: ``tools/`` and ``tests/`` import it from a checkout
(``tools/*.py`` put the checkout first on ``sys.path``; pytest's ``pythonpath`` does the same).
"""
