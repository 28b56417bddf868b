"""Performance plumbing: XLA options per program, the compilation cache, benchmarks.

``xla_options`` (the compiler options each program gets), ``compile_cache`` (the entry
points' persistent compilation cache), ``benchmarking`` (timings of the train step and
inference, ``tools/benchmark.py``), ``flops`` (FLOP counts of the networks and programs),
``profiling`` (kernel-level profiles of a timed call) and ``compile_only`` (the train step
compiled for a GPU the host does not have).
"""
