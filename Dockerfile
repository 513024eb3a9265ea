# syntax=docker/dockerfile:1
# stocksync: build a wheel with its dependencies, then run it on a slim image as a non-root user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY adapters ./adapters
RUN python -m venv /opt/stocksync \
    && /opt/stocksync/bin/pip install --no-cache-dir .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="stocksync" \
      org.opencontainers.image.description="Keeps sales channels' stock in sync with keyCRM"
RUN groupadd --system --gid 10001 stocksync \
    && useradd --system --uid 10001 --gid stocksync --home-dir /var/lib/stocksync --no-create-home stocksync \
    && mkdir -p /var/lib/stocksync /etc/stocksync \
    && chown stocksync:stocksync /var/lib/stocksync
COPY --from=build /opt/stocksync /opt/stocksync
ENV PATH="/opt/stocksync/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STOCKSYNC_CONFIG=/etc/stocksync/stocksync.toml
USER 10001:10001
WORKDIR /var/lib/stocksync
VOLUME ["/var/lib/stocksync"]
EXPOSE 9108
# The slim image has no curl: Python asks /healthz. The listener must be reachable on 127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status != 200)"]
# Exec form: stocksync is PID 1 and gets SIGTERM/SIGHUP/SIGUSR1 itself (it handles them).
ENTRYPOINT ["stocksync"]
CMD ["run"]
