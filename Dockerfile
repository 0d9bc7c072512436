# timefunnel: the `funnel` CLI (capture, apply, status, ...) in a slim Python image.
#   docker build -t timefunnel:0.1.0 .
#   docker run --rm timefunnel:0.1.0 apply postgresql://... --funnel shop --mirror m1 --delay 4h
# Wheels exist for every dependency (confluent-kafka bundles librdkafka, psycopg[binary]
# bundles libpq), so no compiler is needed.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/timefunnel
COPY pyproject.toml README.md ./
COPY funnel ./funnel
COPY producer ./producer
COPY applier ./applier
COPY schemas ./schemas
RUN pip install . \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/funnel funnel

USER funnel
WORKDIR /home/funnel

# `funnel capture` and `funnel apply` serve /metrics on this port. Inside the container
# it binds loopback unless FUNNEL_METRICS_ADDR says otherwise (docker-compose.yml sets
# 0.0.0.0 so that Prometheus can scrape it over the compose network).
ENV FUNNEL_METRICS_PORT=9464
EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('FUNNEL_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["funnel"]
CMD ["--help"]
