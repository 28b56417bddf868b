"""Reference config ``eagrnet_folder``, kept in the package (sdgan_jax/configs/) so that an
installed sdgan_jax has it; this file keeps ``--config=configs/eagrnet_folder.py`` working."""

from sdgan_jax.configs.eagrnet_folder import get_config  # noqa: F401
