# The NeuroNova node image (serve and worker). GPU workers run the same image with an NVIDIA device.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY neuronova ./neuronova
# torch from PyPI is a CUDA build (its CUDA libraries come as wheels): with the NVIDIA container toolkit on the
# host it uses the GPU. ONNXRUNTIME=gpu swaps the CPU build of ONNX Runtime for onnxruntime-gpu (~300 MB; the
# two wheels share one package directory, so one replaces the other). Without it a GPU worker runs its models
# on torch CUDA (chosen at load; /health shows each model's device).
ARG ONNXRUNTIME=cpu
RUN pip install . \
 && if [ "$ONNXRUNTIME" = "gpu" ]; then pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1; fi
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --system --uid 1000 --home /data neuronova && mkdir -p /data && chown neuronova /data
USER neuronova
VOLUME ["/data"]
EXPOSE 8000 11112
ENTRYPOINT ["neuronova"]
CMD ["serve", "--data-dir", "/data", "--http-host", "0.0.0.0"]
