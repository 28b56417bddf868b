"""Pure-functional Flax Linen networks of SDGAN (no I/O, no downloads)."""
