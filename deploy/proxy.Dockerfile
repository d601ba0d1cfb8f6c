# The modelbus service image: `modelbus serve` with bubblewrap for its closure replicas.
#
#   docker build -f deploy/proxy.Dockerfile -t modelbus-proxy:0.1.0 .     (from a checkout)
#
# Used by deploy/compose.yaml and deploy/kubernetes/proxy.yaml. Closure replicas run in a
# bubblewrap sandbox, which needs user namespaces inside the container (Docker: the default
# seccomp profile allows them on most kernels; Kubernetes: see deploy/README.md). Where they
# are not allowed, `serve --unsafe-no-sandbox` runs closures unconfined: only when every
# deployer is trusted.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY bus /src/bus
COPY transports /src/transports
COPY chooser /src/chooser
COPY proxy /src/proxy
COPY container_manager /src/container_manager
RUN pip install --no-cache-dir /src && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /data --create-home modelbus \
    && install -d -o 10001 -g 10001 -m 0700 /artifacts
USER 10001
ENV PYTHONUNBUFFERED=1 MODELBUS_DATA=/data
WORKDIR /data
ENTRYPOINT ["modelbus"]
CMD ["serve"]
