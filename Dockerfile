# Paimon-server image. Build: docker build -t paimon-server .
# Run:   docker run -p 8080:8080 --env-file .env --stop-timeout 300 paimon-server   (see DEPLOYMENT.md)
FROM python:3.12-slim

# No .pyc files in a read-mostly image; logs unbuffered so they appear at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app

# Dependencies first, so code changes do not invalidate this layer. The one install
# command: wheels only, hash-checked, mega.py without its broken pins.
COPY requirements.txt constraints.txt ./
RUN python -m pip install --no-deps --only-binary :all: --require-hashes --constraint constraints.txt -r requirements.txt

COPY . .

# Run as an unprivileged user; it owns only data/ (local storage and the MEGA session).
RUN useradd --system --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin paimon \
    && mkdir -p /app/data \
    && chown paimon:paimon /app/data
USER paimon

EXPOSE 8080

# The image has no curl; the standard library's urllib is enough. Fails (exit 1) on
# connection errors and on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]

# Same start command as render.yaml. sh expands $PORT; exec replaces sh with gunicorn so
# that gunicorn is PID 1 and receives docker stop's SIGTERM for a graceful shutdown.
CMD ["sh", "-c", "exec gunicorn server:app --config gunicorn.conf.py --bind 0.0.0.0:$PORT"]
