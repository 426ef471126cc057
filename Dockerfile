# The broker as a container: `broker db upgrade` then `broker serve`.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir . && useradd --create-home broker
COPY config ./config
USER broker
EXPOSE 8080
# Migrations are idempotent, so every instance may run them before serving; alembic takes a lock
# on PostgreSQL's version table, so two instances starting together do not both migrate.
CMD ["sh", "-c", "broker db upgrade && broker serve --host 0.0.0.0 --port 8080"]
