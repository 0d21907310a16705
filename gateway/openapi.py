"""The OpenAPI 3 description of the gateway's public routes, served at GET /openapi.json.

It describes what each dialect accepts, so that tools can generate clients and fuzzers
can drive every route; a test runs schemathesis over it against a real instance. The
types and ranges of scalar fields come from the rule tables the routes check bodies with
(gateway/dataplane/validate.py), so the two cannot drift; arrays and objects are described here.
"""

from __future__ import annotations

from typing import Any

from gateway.api.native.logs import MAX_LINES as MAX_LOG_LINES
from gateway.api.openai.handlers import EMBED_RULES
from gateway.api.openai.rerank import RULES as RERANK_RULES
from gateway.dataplane.validate import ANTHROPIC, COMPLETIONS, INT_MAX, OLLAMA, OLLAMA_OPTIONS, OPENAI, RESPONSES, Rule
from gateway.logtail import NAME as LOG_NAME_RULE

Schema = dict[str, Any]


def _obj(required: list[str] | None = None, **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _array(items: Schema, **limits: int) -> Schema:
    return {"type": "array", "items": items, **limits}


def _one_of(*schemas: Schema) -> Schema:
    return {"oneOf": list(schemas)}


def _enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
MODEL: Schema = {"type": "string", "minLength": 1, "example": "gemma3:270m"}
STOP = _one_of(STRING, _array(STRING, maxItems=4))
JSON_OBJECT: Schema = {"type": "object"}
# Ollama durations: "5m", "1h30m", "-1", or a number of seconds (negative: keep loaded).
KEEP_ALIVE = _one_of({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?(ms|s|m|h)?$"}, {"type": "number"})
SCALARS: dict[str, Schema] = {"bool": BOOL, "str": STRING, "strs": STOP, "duration": KEEP_ALIVE}


def _scalar(rule: Rule) -> Schema | None:
    """A rule's schema; None for arrays and objects, whose items a rule does not describe."""
    if rule.kind not in ("int", "num"):
        return SCALARS.get(rule.kind)
    schema: Schema = {"type": "integer" if rule.kind == "int" else "number"}
    # The int64 bounds only keep an integer within what an engine can read: no limit of the API's own.
    if rule.lo is not None and rule.lo > -INT_MAX:
        schema["minimum"] = rule.lo
    if rule.hi is not None and rule.hi < INT_MAX:
        schema["maximum"] = rule.hi
    return schema


def _checked(rules: dict[str, Rule], *names: str) -> dict[str, Schema]:
    """The scalar fields `names` (all of them when none is named) as the route checks them."""
    chosen = names or tuple(rules)
    return {name: schema for name in chosen if (schema := _scalar(rules[name])) is not None}


# --- OpenAI /v1 -------------------------------------------------------------------

TEXT_PART = _obj(["type", "text"], type=_enum("text"), text=STRING)
CHAT_MESSAGE = _obj(
    ["role", "content"],
    role=_enum("system", "developer", "user", "assistant"),
    content=_one_of(STRING, _array(TEXT_PART, minItems=1)), name=STRING,
)
FUNCTION_TOOL = _obj(["type", "function"], type=_enum("function"), function=_obj(
    ["name"], name={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, description=STRING,
    parameters=JSON_OBJECT))
RESPONSE_FORMAT = _one_of(
    _obj(["type"], type=_enum("text", "json_object")),
    _obj(["type", "json_schema"], type=_enum("json_schema"),
         json_schema=_obj(["name"], name=STRING, schema=JSON_OBJECT, strict=BOOL)),
)

# The thinking contract every chat route takes (gateway/thinking/intent.py).
THINKING = {"think": _one_of(BOOL, _enum("low", "medium", "high")), "thinking_budget": _int(1),
            "stream_reasoning_deltas": BOOL,
            "thinking": _obj(["type"], type=_enum("enabled", "adaptive", "disabled"), budget_tokens=_int(1))}

CHAT_COMPLETION = _obj(["model", "messages"], **THINKING, **{
    **_checked(OPENAI, *(name for name in OPENAI if name != "max_output_tokens")), "model": MODEL,
    "messages": _array(CHAT_MESSAGE, minItems=1), "stream_options": _obj(include_usage=BOOL),
    "response_format": RESPONSE_FORMAT, "tools": _array(FUNCTION_TOOL),
    "tool_choice": _one_of(_enum("none", "auto", "required"), FUNCTION_TOOL), "user": STRING,
})
COMPLETION = _obj(["model", "prompt"], **{
    **_checked(COMPLETIONS, *(name for name in COMPLETIONS
                              if name not in ("max_completion_tokens", "max_output_tokens", "top_logprobs"))),
    "model": MODEL, "prompt": _one_of(STRING, _array(STRING, minItems=1), _array(_int(0), minItems=1)),
    "echo": BOOL,
})
EMBEDDINGS = _obj(["model", "input"], **{
    **_checked(EMBED_RULES), "model": MODEL, "encoding_format": _enum("float", "base64"),
    "input": _one_of(STRING, _array(STRING, minItems=1), _array(_int(0), minItems=1),
                     _array(_array(_int(0), minItems=1), minItems=1)),
})
RERANK = _obj(["model", "query", "documents"], **{
    **_checked(RERANK_RULES), "model": MODEL,
    "documents": _array(_one_of(STRING, _obj(["text"], text=STRING)), minItems=1),
})
INPUT_ITEM = _obj(
    ["role", "content"],
    role=_enum("system", "developer", "user", "assistant"),
    content=_one_of(STRING, _array(_obj(["type", "text"], type=_enum("input_text"), text=STRING), minItems=1)),
)
RESPONSE_TEXT = _obj(format=_one_of(
    _obj(["type"], type=_enum("text", "json_object")),
    _obj(["type", "name", "schema"], type=_enum("json_schema"), name=STRING, schema=JSON_OBJECT, strict=BOOL),
))
RESPONSE = _obj(["model", "input"], **{
    **_checked(RESPONSES, "stream", "max_output_tokens", "temperature", "top_p", "instructions",
               "parallel_tool_calls", "keep_alive"),
    "model": MODEL, "input": _one_of(STRING, _array(INPUT_ITEM, minItems=1)), "store": BOOL,
    "previous_response_id": STRING, "text": RESPONSE_TEXT,
    "tools": _array(_obj(["type", "name"], type=_enum("function"), name=STRING, parameters=JSON_OBJECT)),
    "tool_choice": _one_of(_enum("none", "auto", "required"), _obj(["type", "name"], type=_enum("function"),
                                                                   name=STRING)),
})


# --- Anthropic /v1/messages --------------------------------------------------------

ANTHROPIC_MESSAGE = _obj(
    ["role", "content"], role=_enum("user", "assistant"),
    content=_one_of(STRING, _array(TEXT_PART, minItems=1)),
)
SYSTEM = _one_of(STRING, _array(TEXT_PART))
ANTHROPIC_TOOL = _obj(["name", "input_schema"], name=STRING, description=STRING, input_schema=JSON_OBJECT)
MESSAGES = _obj(["model", "max_tokens", "messages"], **{
    **_checked(ANTHROPIC), **THINKING, "model": MODEL, "messages": _array(ANTHROPIC_MESSAGE, minItems=1),
    "system": SYSTEM,
    "stop_sequences": _array(STRING), "tools": _array(ANTHROPIC_TOOL), "metadata": _obj(user_id=STRING),
})
COUNT_TOKENS = _obj(["model", "messages"], model=MODEL, messages=_array(ANTHROPIC_MESSAGE, minItems=1),
                    system=SYSTEM, tools=_array(ANTHROPIC_TOOL))


# --- Ollama /api -------------------------------------------------------------------

OPTIONS = _obj(**_checked(OLLAMA_OPTIONS))
FORMAT = _one_of(_enum("json"), JSON_OBJECT)
IMAGES = _array({"type": "string", "description": "base64-encoded image"})
OLLAMA_MESSAGE = _obj(["role", "content"], role=_enum("system", "user", "assistant"), content=STRING,
                      images=IMAGES)
GENERATION = {**_checked(OLLAMA, "stream", "keep_alive"), "format": FORMAT, "options": OPTIONS, **THINKING}

OLLAMA_CHAT = _obj(["model", "messages"], model=MODEL, messages=_array(OLLAMA_MESSAGE), **GENERATION)
OLLAMA_GENERATE = _obj(["model"], **{
    **_checked(OLLAMA, "prompt", "suffix", "system", "template", "raw"), **GENERATION, "model": MODEL,
    "images": IMAGES})
OLLAMA_EMBED = _obj(["model", "input"], model=MODEL, input=_one_of(STRING, _array(STRING)), truncate=BOOL,
                    dimensions=_int(1), options=OPTIONS, keep_alive=KEEP_ALIVE)
OLLAMA_EMBEDDINGS = _obj(["model", "prompt"], model=MODEL, prompt=STRING, options=OPTIONS, keep_alive=KEEP_ALIVE)
OLLAMA_SHOW = _obj(["model"], model=MODEL, verbose=BOOL)
OLLAMA_COPY = _obj(["source", "destination"], source=MODEL, destination=MODEL)
OLLAMA_DELETE = _obj(["model"], model=MODEL)
OLLAMA_PULL = _obj(["model"], model=MODEL, stream=BOOL, insecure=BOOL)

# --- native /lf --------------------------------------------------------------------

KIND = _enum("chat", "embed", "rerank")
SWITCH = _obj(["model"], model=MODEL, pin=BOOL, keep_alive=KEEP_ALIVE, kind=KIND, num_ctx=_int(0))
UNLOAD = _obj(model=MODEL, kind=KIND)
PULL = _obj(["model"], model=MODEL, keep=BOOL)
CATALOG_KIND = {"name": "kind", "in": "query", "required": False,
                "schema": _enum("chat", "embedding", "vision", "rerank")}
OLLAMA_CREATE = _obj(["model"], **{"model": MODEL, "from": MODEL, "stream": BOOL, "modelfile": STRING,
                                   "files": {"type": "object", "additionalProperties": STRING}})


def _post(summary: str, body: Schema, method: str = "post") -> dict[str, Schema]:
    return {method: {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": ANSWERS,
    }}


def _streamed(summary: str, body: Schema, *types: str) -> dict[str, Schema]:
    """A POST whose 200 is a stream, not one JSON body: `types` are the content types it may answer with."""
    operation = _post(summary, body)
    operation["post"]["responses"] = {**ANSWERS, "200": {"description": "OK", "content": {
        kind: {"schema": {"type": "string"}} for kind in types}}}
    return operation


def _get(summary: str, *parameters: Schema, head: bool = False) -> dict[str, Schema]:
    operation = {"summary": summary, "parameters": list(parameters), "responses": {"200": {"description": "OK"}}}
    return {"get": operation, "head": dict(operation)} if head else {"get": operation}


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


MODEL_ID_PARAMETER = _path("id", MODEL)
DIGEST_PARAMETER = _path("digest", {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"})
ANSWERS = {"200": {"description": "OK"}, "4XX": {"description": "refused, in the dialect's error shape"}}
BLOBS = {
    "head": {"summary": "whether Ollama's blob store has a blob", "parameters": [DIGEST_PARAMETER],
             "responses": {"200": {"description": "present"}, "404": {"description": "absent"}}},
    "post": {"summary": "upload a blob, checked against its digest", "parameters": [DIGEST_PARAMETER],
             "requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}},
             "responses": {"201": {"description": "stored"}, "4XX": ANSWERS["4XX"]}},
}
DELETE_BY_NAME = {"delete": {"summary": "delete an installed model", "parameters": [_path("name", MODEL)],
                             "responses": ANSWERS}}
# A log is named by its file in the logs directory (gateway/logtail.py); its live stream is not described.
LOG_NAME = _path("name", {"type": "string", "pattern": f"^{LOG_NAME_RULE.pattern}$", "example": "manager"})
LOG_LINES = {"name": "lines", "in": "query", "required": False, "schema": _int(1, MAX_LOG_LINES)}
REQUESTS_LIMIT = {"name": "limit", "in": "query", "required": False, "schema": _int(1, 10_000)}
REQUESTS_MODEL = {"name": "model", "in": "query", "required": False, "schema": MODEL}
CANCEL_PULL = {"delete": {"summary": "cancel the pull of a model (the next pull resumes it)",
                          "parameters": [_path("name", MODEL)], "responses": ANSWERS}}
# Keys of config.toml, dotted for tables ("llama_cpp.ctx_size") or nested; null resets one to its default.
CONFIG = {
    **_get("the settings in force, secrets redacted, with what the environment overrides and what needs a restart"),
    "patch": {"summary": "change config.toml: checked whole, written atomically, applied live where it can be",
              "requestBody": {"required": True, "content": {"application/json": {"schema": JSON_OBJECT}}},
              "responses": ANSWERS},
}

PATHS: dict[str, dict[str, Schema]] = {
    "/": _get("liveness, as Ollama answers it", head=True),
    "/health": _get("200 only when a manager answers"),
    "/openapi.json": _get("this description"),
    "/lf/status": _get("the manager's snapshot"),
    "/lf/hardware": _get("the prober's hardware reading"),
    "/lf/engines": _get("the engine chosen for each installed model and why; each engine's install; the host default"),
    "/lf/model/list": _get("the model index"),
    "/lf/model/switch": _post("load a model and wait until it is ready", SWITCH),
    "/lf/model/unload": _post("unload a model (every loaded model when none is named)", UNLOAD),
    "/lf/model/delete/{name}": DELETE_BY_NAME,
    "/lf/model/pull": _streamed("pull a model, its progress streamed as SSE", PULL, "text/event-stream"),
    "/lf/model/pull/{name}": CANCEL_PULL,
    "/lf/catalog": _get("the catalog's shortcuts, with what fits this machine", CATALOG_KIND),
    "/lf/config": CONFIG,
    "/lf/requests": _get("the request log, newest first", REQUESTS_LIMIT, REQUESTS_MODEL),
    "/metrics": _get("Prometheus metrics of the gateway and the manager"),
    "/lf/logs": _get("the logs of LMForge's processes and engines, with their sizes"),
    "/lf/logs/{name}": _get("the last lines of one log, as text", LOG_NAME, LOG_LINES),
    "/v1/models": _get("installed models with capabilities"),
    "/v1/models/{id}": _get("one model", MODEL_ID_PARAMETER),
    "/v1/chat/completions": _post("OpenAI chat completion", CHAT_COMPLETION),
    "/v1/completions": _post("OpenAI text completion", COMPLETION),
    "/v1/embeddings": _post("OpenAI embeddings, batched", EMBEDDINGS),
    "/v1/rerank": _post("Cohere/Jina rerank", RERANK),
    "/rerank": _post("Cohere/Jina rerank", RERANK),
    "/api/rerank": _post("Cohere/Jina rerank, errors in Ollama's shape", RERANK),
    "/v1/responses": _post("OpenAI Responses, stateless", RESPONSE),
    "/v1/messages": _post("Anthropic Messages", MESSAGES),
    "/v1/messages/count_tokens": _post("Anthropic token count", COUNT_TOKENS),
    "/api/version": _get("Ollama version"),
    "/api/tags": _get("Ollama model list"),
    "/api/ps": _get("Ollama loaded models"),
    "/api/chat": _post("Ollama chat", OLLAMA_CHAT),
    "/api/generate": _post("Ollama generate", OLLAMA_GENERATE),
    "/api/embed": _post("Ollama embeddings", OLLAMA_EMBED),
    "/api/embeddings": _post("Ollama legacy embeddings", OLLAMA_EMBEDDINGS),
    "/api/show": _post("Ollama model details", OLLAMA_SHOW),
    "/api/create": _post("Ollama create, from an installed model or uploaded GGUF blobs", OLLAMA_CREATE),
    "/api/blobs/{digest}": BLOBS,
    "/api/copy": _post("Ollama copy", OLLAMA_COPY),
    "/api/delete": _post("Ollama delete", OLLAMA_DELETE, method="delete"),
    "/api/pull": _streamed("Ollama pull, with NDJSON progress (one JSON object when stream is false)",
                          OLLAMA_PULL, "application/x-ndjson", "application/json"),
}


def openapi_document(version: str) -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {"title": "LMForge gateway", "version": version,
                 "description": "OpenAI, Anthropic and Ollama dialects over local engines, and the native /lf API."},
        "paths": PATHS,
    }
