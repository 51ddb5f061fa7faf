# Production image: one role per container, e.g.
#   docker run --read-only -v data:/data IMAGE role collector BINANCE --config /etc/data-feed/config.yaml --http-port 9100
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.* g++=4:12.* libc6-dev=2.36-* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# dependency layer first: it changes only when the lock does
COPY requirements.lock ./
RUN pip install --no-cache-dir --prefix=/install -r requirements.lock
COPY pyproject.toml setup.py README.md ./
COPY data_feed ./data_feed
COPY featurizer ./featurizer
# the Cython kernels compile here; the final stage gets the built package only
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="data-feed" \
      org.opencontainers.image.description="Crypto market-data pipeline, one role per container" \
      org.opencontainers.image.source="https://github.com/data-feed/data-feed" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin datafeed \
 && mkdir -p /data \
 && chown 10001:10001 /data
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/data DATA_FEED_HTTP_PORT=9100
# the only writable paths under a read-only root filesystem
VOLUME ["/data", "/tmp"]
WORKDIR /data
USER 10001
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request;urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DATA_FEED_HTTP_PORT','9100'),timeout=2)"]
ENTRYPOINT ["data-feed"]
CMD ["--help"]
