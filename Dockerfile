# A kachery hub: `docker build -t kachery-hub .`; how to run it: docs/deploy.md ("Run it in a container").
# Arguments after the image name are more `kachery-hub serve` flags; settings come from KACHERY_HUB_* variables.

# The wheel is built from the checkout in a stage of its own, so the image holds no sources.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY js/ js/
COPY kachery_core/ kachery_core/
COPY kachery_hub/ kachery_hub/
COPY kachery_jupyter/ kachery_jupyter/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels/ /wheels/
RUN pip install "$(echo /wheels/kachery_jupyter-*.whl)[hub]" && rm -rf /wheels

# An unprivileged user; the data folder (embedded database, file bytes, the admin token) is its own.
RUN useradd --system --uid 10001 --create-home --home-dir /home/kachery --shell /usr/sbin/nologin kachery \
    && install -d -o kachery -g kachery -m 0700 /data
ENV KACHERY_HUB_DATA=/data
VOLUME ["/data"]
USER kachery
WORKDIR /home/kachery

EXPOSE 8555
# Liveness only: /api/ready (database and store answer) is for a load balancer's checks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8555/api/health', timeout=4)"]
# 0.0.0.0 is inside the container's own network: `docker run -p` decides who outside reaches it.
ENTRYPOINT ["kachery-hub", "serve", "--host", "0.0.0.0", "--port", "8555"]
