"""mlx_lm.server as LMForge runs it: one model whatever a request names, and serving only once it is loaded.

Run by the MLX environment's own Python (`python mlx_launch.py <mlx_lm.server arguments>`), so it imports nothing
of LMForge's and only the standard library at the top: manager/engines/mlx.py reads its constants.

What mlx_lm.server does on its own that LMForge cannot have:
- A request's `model` (and `adapters`, `draft_model`) names what to load: a local path or a Hugging Face repo,
  downloaded on the spot. The gateway relays bodies as clients send them, with LMForge's model names, so every
  request would try to load something else, and any client could make the engine read any path on this machine.
  Here every request is served by the model on the command line.
- It answers /health with 200 while its generation thread is still loading the model (and the process lives on
  after that load fails). Here the HTTP server binds only once the model is loaded; a failed load exits 1.
- It fetches http(s) image URLs itself, wherever they point. LMForge's gateway fetches images with its own address
  checks and sends data: URLs; a URL that reaches the engine any other way is refused here, never fetched.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

LOADING = "lmforge: loading the model"  # a load stage's marker (MlxAdapter.load_markers)
LOADED = "lmforge: model loaded"
FAILED = "lmforge: error: the model failed to load"
# What this launcher reaches into; an mlx-lm without them is refused at once, naming the versions it was made for.
HOOKS = ("ModelProvider", "_run_http_server", "main")
MADE_FOR = "mlx-lm 0.32"


def _refuse(why: str) -> None:
    print(f"lmforge: error: {why}; LMForge's MLX launcher was made for {MADE_FOR}: "
          "reinstall the engine (lmforge engine install mlx)", file=sys.stderr, flush=True)
    os._exit(2)


def refuse_image_urls(messages: object) -> None:
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url", part.get("image")) if isinstance(part, dict) else None
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and not url.startswith("data:"):
                raise ValueError("this engine fetches no image URL: send the image as a data: URL")


def main() -> None:
    # Python put this file's directory first on the path, and it holds mlx.py (the adapter): `import mlx` must find
    # the package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from mlx_lm import server
    except ImportError as exc:
        _refuse(f"mlx_lm.server cannot be imported ({exc})")
    missing = [name for name in HOOKS if not hasattr(server, name)]
    missing += [f"ModelProvider.{name}" for name in ("load", "load_default") if not hasattr(server.ModelProvider, name)]
    if missing:
        _refuse(f"this mlx-lm has no {', '.join(missing)}")
    loaded, failed = threading.Event(), []

    class OneModel(server.ModelProvider):  # type: ignore[misc, name-defined]
        def load(self, model_path, adapter_path=None, draft_model_path=None):  # type: ignore[no-untyped-def]
            # Whatever the request names: the command line's model, adapter and draft model.
            return super().load("default_model", None, "default_model")

        def load_default(self) -> None:  # runs first in mlx_lm.server's generation thread
            logging.info(LOADING)
            try:
                super().load_default()
            except BaseException as exc:
                # Logged here: the thread's own report of it may come after this process has exited.
                logging.error("%s: %s: %s", FAILED, type(exc).__name__, exc)
                failed.append(exc)
                raise
            finally:
                loaded.set()
            logging.info(LOADED)

    serve = server._run_http_server

    def serve_once_loaded(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.wait()
        if failed:
            logging.shutdown()
            os._exit(1)  # the generation thread is gone: nothing could ever be served
        return serve(*args, **kwargs)

    server.ModelProvider = OneModel
    server._run_http_server = serve_once_loaded
    if hasattr(server, "_inline_image_urls"):  # its chat handler turns what this raises into a 400
        server._inline_image_urls = refuse_image_urls
    sys.argv[0] = "mlx_lm.server"
    server.main()


if __name__ == "__main__":
    main()
