"""Reference config ``eagrnet_polygons``, kept in the package (sdgan_jax/configs/) so that an
installed sdgan_jax has it; this file keeps ``--config=configs/eagrnet_polygons.py`` working."""

from sdgan_jax.configs.eagrnet_polygons import get_config  # noqa: F401
