"""
The twistd plugin: `twistd dcounter`.  Twisted imports dcounter.tap only when
the plugin runs, so `twistd --help` stays fast and nothing installs a reactor.
"""

from twisted.application.service import ServiceMaker

dcounter = ServiceMaker(
    "dcounter",
    "dcounter.tap",
    "A peer-to-peer distributed counter: HTTP API, UDP discovery, health checks.",
    "dcounter",
)
