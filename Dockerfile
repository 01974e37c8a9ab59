# image2model: the web app (and, with another command, a huey worker) in one image.
# An exact tag, so a rebuild gets the same Python and Debian (bump it on purpose).
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data GRADIO_SERVER_NAME=0.0.0.0 PORT=7860

RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app:app /data
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY --chown=app:app . .

USER app
VOLUME ["/data"]
EXPOSE 7860
# Fits the role: the web's /health, or for a huey_consumer a recent liveness record of a
# worker on this host (image2model/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "image2model.healthcheck"]

# A worker machine runs the same image with:
#   huey_consumer image2model.worker.main.huey -w 25 -k thread -g TERM -t 30
# Give `docker run` a --stop-timeout longer than the graceful drain (README: Docker).
CMD ["python", "app.py"]
