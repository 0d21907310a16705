"""The lines llama-server writes while it loads, each with the load stage it opens (manager/load_watch.py).

Engines run at llama-server's default verbosity (-lv 3). -lv 4 would name every step of a load, but it
writes about six times the lines per chat request (42 against 7, measured with Gemma 3 270M) and some two
hundred at each load, so its lines are only recognised here, for an engine started with it in extra_args.
"""

from __future__ import annotations

LOAD_MARKERS: tuple[tuple[str, str], ...] = (
    ("load_model: loading model", "loading_weights"),  # the first line about the model
    ("load_tensors: loading model tensors", "loading_weights"),  # -lv 4
    ("llama_context: constructing llama_context", "building_context"),  # -lv 4
    # Weights in and the context built: the warm-up run follows (-lv 3 says nothing in between).
    ("llama threadpool init", "warming_up"),
    ("warming up the model", "warming_up"),  # -lv 4
)
