"""Reference config ``celeba``, kept in the package (sdgan_jax/configs/) so that an
installed sdgan_jax has it; this file keeps ``--config=configs/celeba.py`` working."""

from sdgan_jax.configs.celeba import get_config  # noqa: F401,E501  pylint: disable=unused-import
