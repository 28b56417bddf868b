# The worker container of the Beam pipeline (sdgan_jax.anonymize.beam_pipeline) for Dataflow
# with NVIDIA GPUs, and for Flink or Spark with DOCKER environments (docs/scale.md).
#
# Build from the repository root, with the model (a training workdir) in the build context:
#   docker build -f docker/beam_worker.Dockerfile --build-arg MODEL=workdirs/demo \
#       -t REGION-docker.pkg.dev/PROJECT/REPO/sdgan-beam:0.1 .
#
# The image holds the CUDA build of JAX (its pip wheels bring CUDA and cuDNN; the host
# brings the driver), the converted weights (fetched and converted at build time by
# tools/fetch_weights.py) and the model at /opt/sdgan/model: pass --checkpoint /opt/sdgan/model.

# Beam's SDK image matching the pinned apache-beam: Python 3.11 and the worker boot loader.
ARG BEAM_IMAGE=apache/beam_python3.11_sdk:2.78.0

# 1. The weights: the converters need torch, onnx and tflite, which the workers do not.
FROM ${BEAM_IMAGE} AS weights
WORKDIR /src
COPY requirements.txt requirements-convert.txt pyproject.toml README.md LICENSE ./
COPY sdgan_jax sdgan_jax
COPY tools tools
RUN pip install --no-cache-dir -r requirements-convert.txt \
 && pip install --no-cache-dir --no-deps . \
 && SDGAN_WEIGHTS_DIR=/weights python tools/fetch_weights.py

# 2. The worker.
FROM ${BEAM_IMAGE}
WORKDIR /opt/sdgan
COPY requirements.txt pyproject.toml README.md LICENSE ./
COPY sdgan_jax sdgan_jax
COPY tools tools
# jax[cuda12] after the pinned CPU requirements: same JAX version, CUDA plugin added;
# apache-beam[gcp] for gs:// (use [aws] for s3://).
RUN pip install --no-cache-dir -r requirements.txt "apache-beam[gcp]==2.78.0" \
 && pip install --no-cache-dir "jax[cuda12]==0.10.2" \
 && pip install --no-cache-dir --no-deps .
COPY --from=weights /weights /opt/sdgan/weights
ARG MODEL=workdirs/demo
COPY ${MODEL} /opt/sdgan/model
ENV SDGAN_WEIGHTS_DIR=/opt/sdgan/weights
ENV JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
# Dataflow mounts the host's NVIDIA driver libraries here.
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib
# Beam may start more than one SDK process on a VM: JAX must not take all GPU memory first.
ENV XLA_PYTHON_CLIENT_PREALLOCATE=false
ENTRYPOINT ["/opt/apache/beam/boot"]
