# dcounter node image, installed only from wheelhouse/ (built on the host by
# `make wheelhouse`, pinned by constraints.txt): no network needed to build,
# and the same versions every time.
#
#   make image                      # wheelhouse, then this build
#   docker build --build-arg BASE=dcounter-base:bookworm -t dcounter .
#
# BASE is any image with Python 3.11 and its venv module: python:3.11-slim by
# default; `make base-image` makes one from Debian packages for hosts that
# cannot pull from Docker Hub.  Nodes on one compose network find each other
# by UDP broadcast; elsewhere pass --peers or --join-dns (see README.md).
ARG BASE=python:3.11-slim
FROM ${BASE}

COPY constraints.txt wheelhouse/ /tmp/wheelhouse/
# A venv of the wheelhouse alone (--no-index); then the twistd plugin cache,
# written now, as the non-root user could not write it later.
RUN python3 -m venv /opt/dcounter \
    && /opt/dcounter/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
       -c /tmp/wheelhouse/constraints.txt dcounter \
    && /opt/dcounter/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && rm -rf /tmp/wheelhouse \
    && useradd --system --uid 10001 --home-dir /data --create-home dcounter

ENV PATH=/opt/dcounter/bin:$PATH PYTHONUNBUFFERED=1 PORT=8080
USER 10001
WORKDIR /data
EXPOSE 8080/tcp 7000/udp
VOLUME ["/data"]
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=2)"]
# The command the tests run: twistd in the foreground, logging to stdout.
ENTRYPOINT ["twistd", "-n", "--pidfile=", "dcounter"]
CMD ["--data-dir", "/data/node"]
