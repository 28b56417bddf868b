"""Converters from other frameworks' weight files to our Flax modules (torch/onnx imported lazily)."""
