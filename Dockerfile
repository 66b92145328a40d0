# dcounter node image.  Nodes on one compose network find each other by UDP
# broadcast; elsewhere pass --peers or --join-dns (see README.md).
FROM python:3.11-slim

WORKDIR /src
COPY setup.py README.md ./
COPY dcounter/ dcounter/
COPY twisted/ twisted/
# A regular install, so twistd finds the plugin in site-packages; then the
# plugin cache, written now, as the non-root user could not write it later.
RUN pip install --no-cache-dir . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && useradd --system --uid 10001 --home-dir /data --create-home dcounter

USER 10001
WORKDIR /data
ENV PORT=8080
EXPOSE 8080/tcp 7000/udp
VOLUME ["/data"]
HEALTHCHECK --interval=5s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=2)"]
ENTRYPOINT ["twistd", "-n", "--pidfile=", "dcounter"]
CMD ["--data-dir", "/data/node"]
