# The NeuroNova node image (serve and worker). GPU workers run the same image with an NVIDIA device.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY neuronova ./neuronova
RUN pip install .
RUN useradd --system --uid 1000 --home /data neuronova && mkdir -p /data && chown neuronova /data
USER neuronova
VOLUME ["/data"]
EXPOSE 8000 11112
ENTRYPOINT ["neuronova"]
CMD ["serve", "--data-dir", "/data", "--http-host", "0.0.0.0"]
