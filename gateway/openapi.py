"""The OpenAPI 3 description of the gateway's public routes, served at GET /openapi.json.

It describes what each dialect accepts (types and ranges, as the real APIs define them),
so that tools can generate clients and fuzzers can drive every route; a test runs
schemathesis over it against a real instance.
"""

from __future__ import annotations

from typing import Any

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


def _num(minimum: float, maximum: float) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
MODEL: Schema = {"type": "string", "minLength": 1, "example": "gemma3:270m"}
STOP = _one_of(STRING, _array(STRING, maxItems=4))
JSON_OBJECT: Schema = {"type": "object"}
# Ollama durations: "5m", "1h30m", "-1", or a number of seconds (negative: keep loaded).
KEEP_ALIVE = _one_of({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?(ms|s|m|h)?$"}, {"type": "number"})

SAMPLING: Schema = {
    "temperature": _num(0, 2), "top_p": _num(0, 1), "seed": _int(),
    "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
}


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

CHAT_COMPLETION = _obj(
    ["model", "messages"],
    model=MODEL, messages=_array(CHAT_MESSAGE, minItems=1),
    max_tokens=_int(1), max_completion_tokens=_int(1), n=_int(1, 8), stop=STOP, stream=BOOL,
    stream_options=_obj(include_usage=BOOL), response_format=RESPONSE_FORMAT,
    logprobs=BOOL, top_logprobs=_int(0, 20), tools=_array(FUNCTION_TOOL),
    tool_choice=_one_of(_enum("none", "auto", "required"), FUNCTION_TOOL), user=STRING, **SAMPLING,
)
COMPLETION = _obj(
    ["model", "prompt"],
    model=MODEL, prompt=_one_of(STRING, _array(STRING, minItems=1), _array(_int(0), minItems=1)),
    max_tokens=_int(1), n=_int(1, 8), stop=STOP, stream=BOOL, logprobs=_int(0, 5), echo=BOOL, **SAMPLING,
)
EMBEDDINGS = _obj(
    ["model", "input"],
    model=MODEL,
    input=_one_of(STRING, _array(STRING, minItems=1), _array(_int(0), minItems=1),
                  _array(_array(_int(0), minItems=1), minItems=1)),
    encoding_format=_enum("float", "base64"), dimensions=_int(1), user=STRING,
)
RERANK = _obj(
    ["model", "query", "documents"],
    model=MODEL, query=STRING,
    documents=_array(_one_of(STRING, _obj(["text"], text=STRING)), minItems=1),
    top_n=_int(1), return_documents=BOOL,
)
INPUT_ITEM = _obj(
    ["role", "content"],
    role=_enum("system", "developer", "user", "assistant"),
    content=_one_of(STRING, _array(_obj(["type", "text"], type=_enum("input_text"), text=STRING), minItems=1)),
)
RESPONSES = _obj(
    ["model", "input"],
    model=MODEL, input=_one_of(STRING, _array(INPUT_ITEM, minItems=1)), instructions=STRING,
    max_output_tokens=_int(1), stream=BOOL, previous_response_id=STRING, store=BOOL,
    temperature=_num(0, 2), top_p=_num(0, 1),
    tools=_array(_obj(["type", "name"], type=_enum("function"), name=STRING, parameters=JSON_OBJECT)),
)


# --- Anthropic /v1/messages --------------------------------------------------------

ANTHROPIC_MESSAGE = _obj(
    ["role", "content"], role=_enum("user", "assistant"),
    content=_one_of(STRING, _array(TEXT_PART, minItems=1)),
)
SYSTEM = _one_of(STRING, _array(TEXT_PART))
ANTHROPIC_TOOL = _obj(["name", "input_schema"], name=STRING, description=STRING, input_schema=JSON_OBJECT)
MESSAGES = _obj(
    ["model", "max_tokens", "messages"],
    model=MODEL, max_tokens=_int(1), messages=_array(ANTHROPIC_MESSAGE, minItems=1), system=SYSTEM,
    stop_sequences=_array(STRING), stream=BOOL, temperature=_num(0, 1), top_p=_num(0, 1), top_k=_int(0),
    tools=_array(ANTHROPIC_TOOL), metadata=_obj(user_id=STRING),
)
COUNT_TOKENS = _obj(["model", "messages"], model=MODEL, messages=_array(ANTHROPIC_MESSAGE, minItems=1),
                    system=SYSTEM, tools=_array(ANTHROPIC_TOOL))


# --- Ollama /api -------------------------------------------------------------------

OPTIONS = _obj(
    num_predict=_int(-2), num_ctx=_int(1, 131072), temperature=_num(0, 2), top_k=_int(0), top_p=_num(0, 1),
    min_p=_num(0, 1), repeat_penalty=_num(0, 2), repeat_last_n=_int(-1), seed=_int(),
    stop=_array(STRING), presence_penalty=_num(-2, 2), frequency_penalty=_num(-2, 2),
)
FORMAT = _one_of(_enum("json"), JSON_OBJECT)
IMAGES = _array({"type": "string", "description": "base64-encoded image"})
OLLAMA_MESSAGE = _obj(["role", "content"], role=_enum("system", "user", "assistant"), content=STRING,
                      images=IMAGES)
GENERATION = {"stream": BOOL, "format": FORMAT, "options": OPTIONS, "keep_alive": KEEP_ALIVE, "think": BOOL}

OLLAMA_CHAT = _obj(["model", "messages"], model=MODEL, messages=_array(OLLAMA_MESSAGE), **GENERATION)
OLLAMA_GENERATE = _obj(["model"], model=MODEL, prompt=STRING, suffix=STRING, system=STRING, template=STRING,
                       raw=BOOL, images=IMAGES, **GENERATION)
OLLAMA_EMBED = _obj(["model", "input"], model=MODEL, input=_one_of(STRING, _array(STRING)), truncate=BOOL,
                    dimensions=_int(1), options=OPTIONS, keep_alive=KEEP_ALIVE)
OLLAMA_EMBEDDINGS = _obj(["model", "prompt"], model=MODEL, prompt=STRING, options=OPTIONS, keep_alive=KEEP_ALIVE)
OLLAMA_SHOW = _obj(["model"], model=MODEL, verbose=BOOL)
OLLAMA_COPY = _obj(["source", "destination"], source=MODEL, destination=MODEL)
OLLAMA_DELETE = _obj(["model"], model=MODEL)

# --- native /lf --------------------------------------------------------------------

SWITCH = _obj(["model"], model=MODEL, pin=BOOL, keep_alive=KEEP_ALIVE, kind=_enum("chat", "embed", "rerank"),
              num_ctx=_int(1, 131072))


def _post(summary: str, body: Schema, method: str = "post") -> dict[str, Schema]:
    return {method: {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": {"description": "OK"}, "4XX": {"description": "refused, in the dialect's error shape"}},
    }}


def _get(summary: str, *parameters: Schema, head: bool = False) -> dict[str, Schema]:
    operation = {"summary": summary, "parameters": list(parameters), "responses": {"200": {"description": "OK"}}}
    return {"get": operation, "head": dict(operation)} if head else {"get": operation}


MODEL_ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": MODEL}

PATHS: dict[str, dict[str, Schema]] = {
    "/": _get("liveness, as Ollama answers it", head=True),
    "/health": _get("200 only when a manager answers"),
    "/openapi.json": _get("this description"),
    "/lf/status": _get("the manager's snapshot"),
    "/lf/hardware": _get("the prober's hardware reading"),
    "/lf/model/list": _get("the model index"),
    "/lf/model/switch": _post("load a model and wait until it is ready", SWITCH),
    "/v1/models": _get("installed models with capabilities"),
    "/v1/models/{id}": _get("one model", MODEL_ID_PARAMETER),
    "/v1/chat/completions": _post("OpenAI chat completion", CHAT_COMPLETION),
    "/v1/completions": _post("OpenAI text completion", COMPLETION),
    "/v1/embeddings": _post("OpenAI embeddings, batched", EMBEDDINGS),
    "/v1/rerank": _post("Cohere/Jina rerank", RERANK),
    "/v1/responses": _post("OpenAI Responses, stateless", RESPONSES),
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
    "/api/copy": _post("Ollama copy", OLLAMA_COPY),
    "/api/delete": _post("Ollama delete", OLLAMA_DELETE, method="delete"),
}


def openapi_document(version: str) -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {"title": "LMForge gateway", "version": version,
                 "description": "OpenAI, Anthropic and Ollama dialects over local engines, and the native /lf API."},
        "paths": PATHS,
    }
