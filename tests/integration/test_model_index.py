"""Index changes through a running LMForge: import, delete, copy and Ollama's blobs/create, all made by the manager."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from pathlib import Path

import ollama
import psutil
import pytest

from catalog.store import ModelStore
from manager.config import Paths
from tests.support.instance import Instance, llama_servers_of, wait_until
from tests.support.tiny_models import MMPROJ_TOKENS

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    return make_instance(models={"tiny:chat": models_dir / "chat.gguf"}).start()


def model_ids(inst: Instance) -> list[str]:
    code, body = inst.get("/v1/models")
    assert code == 200, body
    return [m["id"] for m in body["data"]]  # type: ignore[index]


def chats(inst: Instance, model: str) -> bool:
    code, body = inst.post("/v1/chat/completions", {"model": model, **CHAT})
    assert code == 200, body
    return body["usage"]["completion_tokens"] <= 3  # type: ignore[index]


def blob_files(inst: Instance) -> list[str]:
    blobs = inst.home / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# --- lmforge import and the native routes ---


def test_cli_import_goes_through_the_manager_and_the_model_serves(inst: Instance, models_dir: Path) -> None:
    result = inst.lmforge("import", str(models_dir / "cycle.gguf"), "--name", "tiny:cycle")
    assert result.returncode == 0, result.stderr
    assert "imported tiny:cycle" in result.stdout + result.stderr
    assert "indexed model tiny:cycle" in inst.log("manager")  # the manager wrote the index, not the CLI
    assert "tiny:cycle" in model_ids(inst) and chats(inst, "tiny:cycle")


def test_cli_import_of_a_bad_file_through_a_running_lmforge_is_one_line(inst: Instance, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"<html>not a model</html>")
    result = inst.lmforge("import", str(bad), "--name", "bad")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "not a GGUF" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "bad" not in model_ids(inst)


@pytest.mark.parametrize("name", ["../x", "", "a//b"])
def test_hostile_names_are_refused_by_every_route_that_names_a_model(inst: Instance, models_dir: Path,
                                                                      name: str) -> None:
    code, body = inst.post("/lf/model/import", {"path": str(models_dir / "chat.gguf"), "name": name})
    assert code == 400 and "name" in body["error"]["message"], body  # type: ignore[index]
    for path, payload in [("/api/create", {"model": name, "files": {"m.gguf": digest_of(models_dir / "chat.gguf")}}),
                          ("/api/copy", {"source": "tiny:chat", "destination": name})]:
        code, body = inst.post(path, payload)
        assert code == 400 and isinstance(body["error"], str), (path, body)  # type: ignore[index]
    code, body = inst.request("DELETE", "/api/delete", {"model": name})
    assert code == 400, body
    assert model_ids(inst) == ["tiny:chat"]
    assert not any(p.name.startswith("x") for p in (inst.home / "models").iterdir())


def test_a_relative_import_path_is_refused_naming_the_field(inst: Instance) -> None:
    code, body = inst.post("/lf/model/import", {"path": "chat.gguf", "name": "x"})
    assert code == 400 and body["error"]["param"] == "path", body  # type: ignore[index]


def test_delete_unloads_a_loaded_model_and_removes_its_files(inst: Instance) -> None:
    code, body = inst.post("/lf/model/switch", {"model": "tiny:chat"})
    assert code == 200, body
    engine = psutil.Process(body["slot"]["pid"])  # type: ignore[index]
    model_dir = Path(ModelStore(Paths(inst.home)).get("tiny:chat").path).parent  # type: ignore[union-attr]
    code, body = inst.request("DELETE", "/lf/model/delete/tiny:chat")
    assert code == 200 and body == {"status": "deleted", "model": "tiny:chat"}
    wait_until(lambda: not engine.is_running(), what="the deleted model's engine to stop")
    assert not model_dir.exists() and model_ids(inst) == []
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})
    assert code == 404, body
    code, body = inst.request("DELETE", "/lf/model/delete/tiny:chat")
    assert code == 404 and body["error"]["code"] == "model_not_found"  # type: ignore[index]


# --- Ollama's index routes ---


def test_ollama_delete_answers_as_ollama_does(inst: Instance) -> None:
    code, body = inst.request("DELETE", "/api/delete", {"model": "missing"})
    assert code == 404 and body == {"error": "model 'missing' not found"}
    assert ollama.Client(host=inst.url).delete("tiny:chat")["status"] == "success"
    assert model_ids(inst) == []


def test_copy_makes_a_second_model_that_outlives_its_source(inst: Instance) -> None:
    client = ollama.Client(host=inst.url)
    assert client.copy("tiny:chat", "tiny:copy")["status"] == "success"
    assert sorted(model_ids(inst)) == ["tiny:chat", "tiny:copy"]
    assert client.create(model="tiny:derived", from_="tiny:copy")["status"] == "success"  # create FROM a model
    client.delete("tiny:chat")
    assert model_ids(inst) == ["tiny:copy", "tiny:derived"] and chats(inst, "tiny:copy")
    code, body = inst.post("/api/copy", {"source": "tiny:chat", "destination": "again"})
    assert code == 404 and "tiny:chat" in body["error"], body  # type: ignore[index]


def test_a_blob_whose_bytes_do_not_match_its_digest_leaves_no_file(inst: Instance, models_dir: Path) -> None:
    wrong = "sha256:" + "0" * 64
    code, body = inst.request("POST", f"/api/blobs/{wrong}", raw=(models_dir / "chat.gguf").read_bytes())
    assert code == 400 and "digest mismatch" in body["error"], body  # type: ignore[index]
    code, body = inst.request("POST", "/api/blobs/sha256:XYZ", raw=b"abc")
    assert code == 400 and "digest" in body["error"], body  # type: ignore[index]
    assert blob_files(inst) == []
    assert inst.request("HEAD", f"/api/blobs/{wrong}")[0] == 404


def test_ollama_create_from_a_blob_with_the_real_client(inst: Instance, models_dir: Path) -> None:
    client = ollama.Client(host=inst.url)
    digest = client.create_blob(models_dir / "cycle.gguf")
    assert digest == digest_of(models_dir / "cycle.gguf")
    assert blob_files(inst) == [digest.replace(":", "-")]
    assert inst.request("HEAD", f"/api/blobs/{digest}")[0] == 200
    assert client.create(model="blobbed", files={"cycle.gguf": digest})["status"] == "success"
    statuses = [p["status"] for p in client.create(model="streamed", files={"cycle.gguf": digest}, stream=True)]
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success"
    assert {"blobbed", "streamed"} <= set(model_ids(inst))
    assert chats(inst, "blobbed") and chats(inst, "streamed")


def test_create_refuses_a_blob_never_uploaded_and_the_older_modelfile_api_works(inst: Instance,
                                                                                 models_dir: Path) -> None:
    missing = "sha256:" + "1" * 64
    code, body = inst.post("/api/create", {"model": "m", "files": {"m.gguf": missing}, "stream": False})
    assert code == 400 and "was not uploaded" in body["error"], body  # type: ignore[index]
    digest = ollama.Client(host=inst.url).create_blob(models_dir / "chat.gguf")
    modelfile = f"FROM @{digest}\nTEMPLATE \"{{{{ .Prompt }}}}\"\nPARAMETER temperature 0"
    code, body = inst.post("/api/create", {"name": "old:api", "modelfile": modelfile, "stream": False})
    assert code == 200 and body == {"status": "success"}
    assert "old:api" in model_ids(inst)
    assert "ignoring modelfile PARAMETER, TEMPLATE" in inst.log("gateway")


# --- a vision model: the projector travels with the model and reaches the engine ---


def png(width: int, height: int) -> bytes:
    """A solid red PNG, written by hand so the test needs no imaging library."""
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_a_model_created_with_its_projector_sees_images(inst: Instance, models_dir: Path) -> None:
    client = ollama.Client(host=inst.url)
    files = {name: client.create_blob(models_dir / name) for name in ("chat.gguf", "mmproj.gguf")}
    assert client.create(model="tiny:vision", files=files)["status"] == "success"
    code, body = inst.get("/v1/models")
    vision = next(m for m in body["data"] if m["id"] == "tiny:vision")  # type: ignore[index]
    assert vision["capabilities"]["vision"] is True
    image = "data:image/png;base64," + base64.b64encode(png(8, 8)).decode()
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:vision", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": content}]})
    assert code == 200, body
    assert body["usage"]["prompt_tokens"] > MMPROJ_TOKENS  # type: ignore[index]
    (engine,) = llama_servers_of(inst.home)
    argv = engine.cmdline()
    assert Path(argv[argv.index("--mmproj") + 1]).read_bytes() == (models_dir / "mmproj.gguf").read_bytes()


def test_cli_import_with_mmproj_marks_the_model_as_seeing(inst: Instance, models_dir: Path) -> None:
    result = inst.lmforge("import", str(models_dir / "chat.gguf"), "--name", "cli:vision",
                          "--mmproj", str(models_dir / "mmproj.gguf"))
    assert result.returncode == 0 and "vision" in result.stdout + result.stderr, result.stderr
    code, body = inst.get("/v1/models")
    entry = next(m for m in body["data"] if m["id"] == "cli:vision")  # type: ignore[index]
    assert entry["capabilities"]["vision"] is True
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:chat", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert code == 400, body  # the model without a projector cannot see
