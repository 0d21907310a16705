"""GET /metrics: the gateway's Prometheus figures, then the manager's (manager/metrics.py says how they come)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway.keys import MANAGER, METRICS
from manager.client import ManagerError, ManagerTimeout, ManagerUnavailable
from manager.protocol import MetricsReply, MetricsRequest

# The classic text format, which generate_latest writes and every Prometheus reads (2.x knows no 1.0.0).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MANAGER_WAIT_S = 2.0  # a scrape must not hang on a stuck manager: its part is left out, and said so


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].exposition()
    up = 0
    try:
        reply: MetricsReply = await request.app[MANAGER].request(MetricsRequest, timeout=MANAGER_WAIT_S)
        text += reply.text.encode()
        up = 1
    except (ManagerError, ManagerTimeout, ManagerUnavailable):
        pass
    text += (b"# HELP lmforge_manager_up Whether the manager answered this scrape (its figures follow when it did)\n"
             b"# TYPE lmforge_manager_up gauge\nlmforge_manager_up %d\n" % up)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
