"""Routes of the native /lf API and /health."""

from __future__ import annotations

from aiohttp import web

from gateway.api.native import config, engines, handlers, logs, metrics, pulls, requests


def setup_native_routes(app: web.Application) -> None:
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_get("/lf/status", handlers.status)
    app.router.add_get("/lf/status/stream", handlers.status_stream)
    app.router.add_get("/lf/hardware", handlers.hardware)
    app.router.add_get("/lf/engines", engines.engines_status)
    app.router.add_get("/lf/model/list", handlers.model_list)
    app.router.add_post("/lf/model/switch", handlers.model_switch)
    app.router.add_post("/lf/model/unload", handlers.model_unload)
    app.router.add_post("/lf/model/import", handlers.model_import)
    app.router.add_delete(r"/lf/model/delete/{name:[\s\S]+}", handlers.model_delete)  # any name: the rule refuses
    app.router.add_post("/lf/model/pull", pulls.model_pull)
    app.router.add_delete(r"/lf/model/pull/{name:[\s\S]+}", pulls.cancel_pull)
    app.router.add_get("/lf/catalog", pulls.catalog_list)
    app.router.add_get("/lf/config", config.config_get)
    app.router.add_patch("/lf/config", config.config_patch)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_get("/lf/requests", requests.recent_requests)
    app.router.add_get("/lf/logs", logs.logs_list)
    app.router.add_get("/lf/logs/{name}/stream", logs.log_stream)
    app.router.add_get(r"/lf/logs/{name:[\s\S]+}", logs.log_tail)  # any name: the log's own check refuses
    app.on_shutdown.append(handlers.close_streams)
