"""Prepared face datasets (TFDS builders) and their record format."""
