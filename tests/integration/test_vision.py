"""Images through a running gateway and a real vision engine: the vision gate in every dialect, remote images
fetched by the gateway and handed on as data: URLs, inline images checked, and each refusal in its route's own
error shape. A loopback canary that every refused URL points at records each connection, and must see none."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from catalog.store import ModelStore
from manager.config import Paths
from tests.support.canary import Canary
from tests.support.images import data_url, png
from tests.support.instance import Instance, clean_up, prepare_instance
from tests.support.metrics import scrape
from tests.support.tiny_models import MMPROJ_TOKENS

VISION, BLIND = "tiny:vision", "tiny:chat"
MAX = 64 * 1024
RED = png(8, 8)
NOT_AN_IMAGE = data_url(b"plain words, not an image at all")
TOO_LARGE = data_url(RED + bytes(MAX))


class ImageServer(ThreadingHTTPServer):
    """The allowlisted image server: `hits` holds (path, User-Agent) of every request; `released` lets /slow end."""

    daemon_threads = True

    def __init__(self, canary_port: int) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.port, self.canary_port = self.server_address[1], canary_port
        self.hits: list[tuple[str, str]] = []
        self.released = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # for the chunked answer
    server: ImageServer

    def do_GET(self) -> None:
        self.server.hits.append((self.path, self.headers.get("User-Agent", "")))
        serve = {"/red.png": self.red, "/big": self.big, "/big-chunked": self.big_chunked, "/slow": self.slow,
                 "/redirect-loopback": self.redirect_loopback, "/not-image": self.not_image}.get(self.path)
        try:
            (serve or self.missing)()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway hangs up once a body passes the cap, as it must

    def head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Connection": "close", **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def answer(self, status: int, body: bytes, content_type: str = "text/plain", **extra: str) -> None:
        self.head(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **extra})
        self.wfile.write(body)

    def red(self) -> None:
        self.answer(200, RED, "text/plain")  # wrong on purpose: the type is sniffed from the bytes

    def big(self) -> None:
        self.answer(200, RED + bytes(MAX), "image/png")

    def big_chunked(self) -> None:
        self.head(200, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
        for chunk in [RED, *[bytes(4096)] * 32]:  # twice the cap, with no length announced
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def slow(self) -> None:
        self.head(200, {"Content-Type": "image/png", "Content-Length": "4096"})
        self.wfile.write(RED[:16])
        self.server.released.wait()  # the rest never comes while the test runs

    def redirect_loopback(self) -> None:
        self.answer(302, b"", Location=f"http://127.0.0.1:{self.server.canary_port}/")

    def not_image(self) -> None:
        self.answer(200, b"<html>not an image</html>", "text/html")

    def missing(self) -> None:
        self.answer(404, b"no such image")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def images(canary: Canary) -> Iterator[ImageServer]:
    server = ImageServer(canary.port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.released.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path,
         images: ImageServer) -> Iterator[Instance]:
    """One LMForge: the image server opened by its port alone (the canary, on another port, stays refused)."""
    config = (f'image_allow_hosts = ["127.0.0.1:{images.port}"]\nimage_max_bytes = {MAX}\n'
              "image_fetch_timeout_s = 3.0\n")
    made = prepare_instance(tmp_path_factory.mktemp("vision") / "home", llama_server,
                            {BLIND: models_dir / "chat.gguf"}, config)
    ModelStore(Paths(made.home)).import_gguf(models_dir / "chat.gguf", VISION, mmproj=models_dir / "mmproj.gguf")
    try:
        yield made.start()
    finally:
        clean_up(made)


@pytest.fixture(autouse=True)
def hits(images: ImageServer, canary: Canary) -> Iterator[list[tuple[str, str]]]:
    """This test's requests to the image server; and after it, no new connection to the canary."""
    images.hits.clear()
    earlier = len(canary.seen())
    yield images.hits
    assert canary.seen()[earlier:] == [], "this test's image URL reached the loopback canary"


# --- one request body per route; `image` None asks the same without it ---


def _openai(model: str, image: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "hi"}]
    parts += [{"type": "image_url", "image_url": {"url": image}}] if image else []
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": parts}]}


def _responses(model: str, image: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "input_text", "text": "hi"}]
    parts += [{"type": "input_image", "image_url": image}] if image else []
    return {"model": model, "max_output_tokens": 1, "input": [{"role": "user", "content": parts}]}


def _anthropic(model: str, image: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "hi"}]
    if image and image.startswith("data:"):
        media, _, data = image[5:].partition(";base64,")
        parts.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
    elif image:
        parts.append({"type": "image", "source": {"type": "url", "url": image}})
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": parts}]}


def _ollama_images(image: str | None) -> dict[str, Any]:
    return {"images": [image.partition(",")[2]]} if image else {}  # Ollama's clients send bare base64


def _ollama_chat(model: str, image: str | None) -> dict[str, Any]:
    return {"model": model, "stream": False, "options": {"num_predict": 1},
            "messages": [{"role": "user", "content": "hi", **_ollama_images(image)}]}


def _ollama_generate(model: str, image: str | None) -> dict[str, Any]:
    return {"model": model, "stream": False, "options": {"num_predict": 1}, "prompt": "hi", **_ollama_images(image)}


ROUTES: dict[str, tuple[Callable[[str, str | None], dict[str, Any]], Callable[[Any], int]]] = {
    "/v1/chat/completions": (_openai, lambda b: b["usage"]["prompt_tokens"]),
    "/v1/responses": (_responses, lambda b: b["usage"]["input_tokens"]),
    "/v1/messages": (_anthropic, lambda b: b["usage"]["input_tokens"]),
    "/api/chat": (_ollama_chat, lambda b: b["prompt_eval_count"]),
    "/api/generate": (_ollama_generate, lambda b: b["prompt_eval_count"]),
}
URL_ROUTES = ["/v1/chat/completions", "/v1/responses", "/v1/messages"]  # Ollama's images are base64 only


def send(inst: Instance, route: str, model: str, image: str | None) -> tuple[int, Any]:
    return inst.post(route, ROUTES[route][0](model, image), timeout=60)


def image_tokens(inst: Instance, route: str, image: str) -> int:
    """The prompt tokens the image added on `route`: the engine counts it only when it was handed the image."""
    answers = [send(inst, route, VISION, each) for each in (image, None)]
    for code, body in answers:
        assert code == 200, body
    tokens = ROUTES[route][1]
    return tokens(answers[0][1]) - tokens(answers[1][1])


def coded(route: str, code: str) -> str | None:
    """`code` where the route's error shape carries one: Ollama's and Anthropic's carry none."""
    return None if route.startswith(("/api/", "/v1/messages")) else code


def error_of(route: str, body: Any) -> tuple[str, str | None]:
    """The message and code of an error, after checking it has the shape of `route`'s dialect."""
    if route.startswith("/api/"):
        assert list(body) == ["error"] and isinstance(body["error"], str), body
        return body["error"], None
    if route.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return body["error"]["message"], None
    assert set(body["error"]) >= {"message", "type", "code"}, body
    return body["error"]["message"], body["error"]["code"]


def refused(inst: Instance, route: str, image: str, status: int, code: str, *words: str) -> str:
    got, body = send(inst, route, VISION, image)
    assert got == status, body
    message, their_code = error_of(route, body)
    assert their_code == coded(route, code), body
    for w in words:
        assert w in message, message
    return message


def counters(inst: Instance) -> dict[str, float]:
    _, samples = scrape(inst.url)
    found = {result: samples.get_one("lmforge_image_inputs_total", result=result) or 0.0
             for result in ("accepted", "inline", "rejected")}
    found |= {reason: value for (name, labels), value in samples.items() if name == "lmforge_image_rejections_total"
              for _, reason in labels}
    return found


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}


# --- the gate ---


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_image_for_a_model_without_vision_is_refused_before_any_fetch(
        inst: Instance, images: ImageServer, hits: list, route: str) -> None:
    image = images.url("/red.png") if route in URL_ROUTES else data_url(RED)
    code, body = send(inst, route, BLIND, image)
    assert code == 400, body
    message, their_code = error_of(route, body)
    assert their_code == coded(route, "vision_not_supported") and "cannot read images" in message
    assert hits == []


# --- accepted ---


@pytest.mark.parametrize("route", URL_ROUTES)
def test_a_remote_image_is_fetched_once_by_the_gateway_and_reaches_the_engine(
        inst: Instance, images: ImageServer, hits: list, route: str) -> None:
    assert image_tokens(inst, route, images.url("/red.png")) >= MMPROJ_TOKENS
    # One fetch, the gateway's: llama-server, handed the URL, would have fetched it again as itself.
    assert len(hits) == 1 and hits[0][0] == "/red.png" and "LMForge/" in hits[0][1], hits


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_inline_image_reaches_the_engine(inst: Instance, hits: list, route: str) -> None:
    assert image_tokens(inst, route, data_url(RED)) >= MMPROJ_TOKENS
    assert hits == []


def test_anthropic_count_tokens_counts_an_image_as_the_engine_reads_it(inst: Instance) -> None:
    body = _anthropic(VISION, data_url(RED))
    code, counted = inst.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "messages")})
    assert code == 200, counted
    code, sent = send(inst, "/v1/messages", VISION, data_url(RED))
    assert code == 200 and counted["input_tokens"] == sent["usage"]["input_tokens"], (counted, sent)


def test_an_image_part_of_an_unknown_shape_is_refused_on_the_relay_too(inst: Instance) -> None:
    part = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    code, body = inst.post("/v1/chat/completions", {"model": VISION, "max_tokens": 1, "messages": [
        {"role": "user", "content": [part]}]})
    assert code == 400 and body["error"]["code"] == "invalid_image", body
    assert "it has no URL" in body["error"]["message"]


def test_a_refusal_names_the_field_the_images_came_in(inst: Instance, images: ImageServer) -> None:
    code, body = send(inst, "/v1/responses", VISION, "file:///etc/passwd")
    assert code == 400 and body["error"]["param"] == "input", body
    code, body = send(inst, "/api/generate", VISION, "data:image/png;base64,aGVsbG8gd29ybGQ=")
    assert code == 400 and body["error"].startswith("an inline image: not an image"), body


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_inline_image_over_the_cap_is_413(inst: Instance, route: str) -> None:
    refused(inst, route, TOO_LARGE, 413, "image_too_large", f"{MAX}-byte limit")


@pytest.mark.parametrize("route", list(ROUTES))
def test_inline_bytes_that_are_not_an_image_are_400(inst: Instance, route: str) -> None:
    refused(inst, route, NOT_AN_IMAGE, 400, "invalid_image", "not an image")


# --- refused remote images ---

# (URL, status, code, words in the message, metric reason, paths the image server saw)
CASES = {
    "loopback": ("http://127.0.0.1:{canary}/", 400, "image_fetch_failed",
                 ["127.0.0.1 is a loopback address", "image_allow_hosts"], "blocked_address", []),
    "private": ("http://10.0.0.1/x.png", 400, "image_fetch_failed", ["a private address (RFC 1918)"],
                "blocked_address", []),
    "metadata": ("http://169.254.169.254/latest/meta-data/", 400, "image_fetch_failed", ["cloud metadata"],
                 "blocked_address", []),
    "ipv4-mapped": ("http://[::ffff:127.0.0.1]:{canary}/", 400, "image_fetch_failed",
                    ["loopback address (127.0.0.1) in IPv4-mapped form"], "blocked_address", []),
    "integer": ("http://2130706433:{canary}/", 400, "image_fetch_failed",
                ["2130706433 (127.0.0.1) is a loopback address"], "blocked_address", []),
    "redirect": ("{images}/redirect-loopback", 400, "image_fetch_failed",
                 ["redirected to http://127.0.0.1:{canary}/", "loopback address"], "blocked_address",
                 ["/redirect-loopback"]),
    "file": ("file:///etc/passwd", 400, "image_fetch_failed", ["only http and https"], "scheme", []),
    "big": ("{images}/big", 413, "image_too_large", [f"{MAX}-byte limit"], "too_large", ["/big"]),
    "big-chunked": ("{images}/big-chunked", 413, "image_too_large", [f"{MAX}-byte limit"], "too_large",
                    ["/big-chunked"]),
    "slow": ("{images}/slow", 400, "image_fetch_failed", ["timed out after 3 s"], "timeout", ["/slow"]),
    "not-image": ("{images}/not-image", 400, "invalid_image", ["not an image"], "not_an_image", ["/not-image"]),
}
ELSEWHERE = [("/v1/messages", "loopback"), ("/v1/messages", "file"), ("/v1/messages", "big-chunked"),
             ("/v1/messages", "slow"), ("/v1/responses", "metadata"), ("/v1/responses", "redirect"),
             ("/v1/responses", "not-image"), ("/v1/responses", "integer")]


def check_case(inst: Instance, images: ImageServer, canary: Canary, hits: list, route: str, case: str) -> None:
    template, status, code, words, reason, paths = CASES[case]
    fill = {"canary": canary.port, "images": images.url("")}
    before = counters(inst)
    message = refused(inst, route, template.format(**fill), status, code, *(w.format(**fill) for w in words))
    assert moved(before, counters(inst)) == {"rejected": 1, reason: 1}, message
    assert [path for path, _ in hits] == paths


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_remote_image_is_answered_in_openais_shape(
        inst: Instance, images: ImageServer, canary: Canary, hits: list, case: str) -> None:
    check_case(inst, images, canary, hits, "/v1/chat/completions", case)


@pytest.mark.parametrize("route,case", ELSEWHERE)
def test_a_refused_remote_image_is_answered_in_each_dialects_shape(
        inst: Instance, images: ImageServer, canary: Canary, hits: list, route: str, case: str) -> None:
    check_case(inst, images, canary, hits, route, case)


def test_an_anthropic_refusal_carries_anthropics_error_type(inst: Instance, images: ImageServer) -> None:
    for image, kind in ((images.url("/big"), "request_too_large"), ("file:///etc/passwd", "invalid_request_error")):
        code, body = send(inst, "/v1/messages", VISION, image)
        assert body["error"]["type"] == kind, (code, body)


# --- counted ---


def test_the_image_counters_move_by_result(inst: Instance, images: ImageServer) -> None:
    before = counters(inst)
    assert send(inst, "/v1/chat/completions", VISION, images.url("/red.png"))[0] == 200
    assert send(inst, "/api/chat", VISION, data_url(RED))[0] == 200
    assert send(inst, "/v1/messages", VISION, "gopher://127.0.0.1/x.png")[0] == 400
    assert moved(before, counters(inst)) == {"accepted": 1, "inline": 1, "rejected": 1, "scheme": 1}


# --- undisturbed ---


def test_refusals_leave_the_loaded_engine_serving(inst: Instance, images: ImageServer, canary: Canary) -> None:
    assert send(inst, "/v1/chat/completions", VISION, data_url(RED))[0] == 200
    pid = inst.slot(VISION)["pid"]  # type: ignore[index]
    for case in CASES:
        url = CASES[case][0].format(canary=canary.port, images=images.url(""))
        assert send(inst, "/v1/chat/completions", VISION, url)[0] in (400, 413)
    assert inst.slot(VISION)["pid"] == pid  # type: ignore[index]
    assert image_tokens(inst, "/v1/chat/completions", images.url("/red.png")) >= MMPROJ_TOKENS
