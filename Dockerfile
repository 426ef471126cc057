# The broker as a container. Dependencies come from requirements.lock (pinned, with hashes:
# `pip install --require-hashes` refuses anything else); the project itself installs without
# dependencies on top. The image runs as the unprivileged user `broker`, which owns the keyring
# directory (/keys, 0700) and the TLS directory (/tls): named volumes mounted there start with
# that ownership.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY broker ./broker
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 broker \
    && mkdir -p /keys /tls \
    && chown broker:broker /keys /tls \
    && chmod 0700 /keys
COPY config ./config
USER broker
EXPOSE 8443
# TLS on every address, client certificates optional (docs/deployment.md). Migrations run once,
# in the compose file's `migrate` service, under a PostgreSQL advisory lock.
CMD ["broker", "serve", "--host", "0.0.0.0", "--port", "8443", "--tls-cert", "/tls/server.pem", "--tls-key", "/tls/server.key", "--tls-client-ca", "/tls/ca/ca.pem", "--tls-client-auth", "optional"]
