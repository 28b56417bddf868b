"""Converters from other frameworks' weight files to our Flax modules.

torch and onnx are imported lazily, by the converters that need them.
"""
