"""The Open WebUI function, loaded the way Open WebUI loads it, and the `plugins install open-webui` command."""

from __future__ import annotations

import importlib
import json
import re
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
import pytest
from helpers import free_port

FUNCTION_FILE = Path(__file__).parents[2] / "plugins" / "open_webui" / "nanocommander_function.py"


def frontmatter(content: str) -> dict[str, str]:
    """Open WebUI's rule: the file opens with a bare triple quote, then `key: value` lines until the next one."""
    lines = content.splitlines()
    assert lines[0].strip() == '"""'
    out = {}
    for line in lines[1:]:
        if '"""' in line:
            break
        if m := re.match(r"^\s*([a-z_]+):\s*(.*)\s*$", line):
            out[m.group(1)] = m.group(2)
    return out


def load(function_id: str = "nanocommander") -> types.ModuleType:
    """As Open WebUI's load_function_module_by_id: exec the text into a fresh module `function_<id>`."""
    content = FUNCTION_FILE.read_text(encoding="utf-8")
    module = types.ModuleType(f"function_{function_id}")
    sys.modules[module.__name__] = module
    module.__dict__["__file__"] = str(FUNCTION_FILE)
    exec(compile(content, str(FUNCTION_FILE), "exec"), module.__dict__)
    return module


def first_class(module) -> str:
    return next(name for name in ("Pipe", "Filter", "Action") if hasattr(module, name))


def test_metadata_and_classes():
    meta = frontmatter(FUNCTION_FILE.read_text(encoding="utf-8"))
    for key in ("title", "author", "version", "required_open_webui_version", "description"):
        assert meta.get(key), key
    module = load()
    assert {"Filter", "Action", "Valves", "UserValves"} <= set(vars(module))
    assert first_class(module) == "Filter"  # what Open WebUI instantiates under the plain id
    compare = load("nanocommander_compare")
    assert first_class(compare) == "Action"
    for instance in (module.Filter(), compare.Action()):
        assert isinstance(instance.valves, instance.Valves) and instance.UserValves().alpha is None


def test_valves_validate():
    module = load()
    assert module.Valves(default_alpha=0).default_alpha == 0
    assert module.Valves(default_alpha=4).default_alpha == 4
    for bad in (-0.1, 4.5):
        with pytest.raises(pydantic.ValidationError):
            module.Valves(default_alpha=bad)
        with pytest.raises(pydantic.ValidationError):
            module.UserValves(alpha=bad)
    with pytest.raises(pydantic.ValidationError):
        module.Valves(connection="kobold")


def test_inlet_alpha_only_for_nanocommander_models():
    module = load()
    flt = module.Filter()
    flt.valves = module.Valves(model_prefixes="tiny, nc-", default_alpha=1.5)
    user = {"id": "u1", "valves": module.UserValves(alpha=0.25)}
    body = flt.inlet({"model": "tiny:latest", "messages": [], "options": {"temperature": 0.2}}, __user__=user)
    assert body["options"] == {"temperature": 0.2, "alpha": 0.25}
    assert flt.inlet({"model": "nc-chat", "messages": []})["options"] == {"alpha": 1.5}  # admin default
    assert (
        flt.inlet({"model": "nc-chat"}, __user__={"valves": module.UserValves()})["options"]["alpha"] == 1.5
    )
    other = {"model": "llama3.2:latest", "messages": [], "options": {"temperature": 0.2}}
    assert flt.inlet(json.loads(json.dumps(other)), __user__=user) == other
    assert "options" not in flt.inlet({"model": "gpt-4o"}, __user__=user)

    flt.valves = module.Valves(model_prefixes="tiny", connection_prefix="nc", connection="openai")
    body = flt.inlet({"model": "nc.tiny:latest"}, __user__={"valves": {"alpha": 2.0}})
    assert body == {"model": "nc.tiny:latest", "alpha": 2.0}
    assert flt.inlet({"model": "tiny:latest"}) == {"model": "tiny:latest"}  # not through the nc connection


def test_inlet_unreachable_server_means_not_ours():
    module = load()
    flt = module.Filter()
    flt.valves = module.Valves(server_url=f"http://127.0.0.1:{free_port()}")
    assert flt.inlet({"model": "tiny"}) == {"model": "tiny"}


def test_side_by_side_markdown():
    module = load("nanocommander_compare")
    md = module.side_by_side({"large": "a|b", "tuned": "line1\nline2", "composite": "<x>"}, 0.5)
    assert "| Large alone | Tuned (small) | Composite (alpha 0.5) |" in md
    assert "a&#124;b" in md and "line1<br>line2" in md and "&lt;x&gt;" in md
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "old reply"},
    ]
    assert module.prompt_messages(msgs) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
    ]


# --- against the real backend (the live_server fixture is in conftest.py) -------------------------------


def test_inlet_asks_the_server_which_models_are_its_own(live_server):
    module = load()
    flt = module.Filter()
    flt.valves = module.Valves(server_url=live_server)  # model_prefixes empty: GET /api/tags
    assert flt.inlet({"model": "tiny:latest"}, __user__={"valves": {"alpha": 0.5}})["options"] == {
        "alpha": 0.5
    }
    assert flt.inlet({"model": "tiny"})["options"] == {"alpha": 1.0}
    assert flt.inlet({"model": "llama3.2"}) == {"model": "llama3.2"}


async def test_action_side_by_side_against_backend(live_server):
    module = load("nanocommander_compare")
    action = module.Action()
    action.valves = module.Valves(server_url=live_server, timeout=120)
    events = []

    async def emit(event):
        events.append(event)

    body = {
        "model": "tiny:latest",
        "chat_id": "c1",
        "id": "m2",
        "messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}],
    }
    result = await action.action(
        body, __user__={"valves": module.UserValves(alpha=0.5)}, __event_emitter__=emit
    )
    md = result["content"]
    assert "| Large alone | Tuned (small) | Composite (alpha 0.5) |" in md
    row = md.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 3 and all(c and "(error" not in c and "(no reply" not in c for c in cells), row
    assert any(e["type"] == "message" and e["data"]["content"] == md for e in events)
    assert events[-1] == {"type": "status", "data": {"description": "Comparison done", "done": True}}
    assert cells[0] != cells[1]  # large and tuned are different models

    zero = await action.action(body, __user__={"valves": {"alpha": 0.0}})  # composite at alpha 0 is the large
    large, _, composite = [c.strip() for c in zero["content"].strip().splitlines()[-1].strip("|").split("|")]
    assert composite == large == cells[0]


async def test_action_reports_server_errors(live_server):
    module = load("nanocommander_compare")
    action = module.Action()
    action.valves = module.Valves(server_url=live_server)
    result = await action.action({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert result["content"].count("(error 404") == 3


# --- the install command, against a fake Open WebUI functions API ---------------------------------------


class FakeOpenWebUI(BaseHTTPRequestHandler):
    functions: dict[str, dict] = {}
    calls: list[tuple[str, str]] = []

    def _reply(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path))
        if self.headers.get("Authorization") != "Bearer sk-test":
            return self._reply(401, {"detail": "Not authenticated"})
        fid = self.path.rsplit("/", 1)[-1]
        if fid in self.functions:
            return self._reply(200, self.functions[fid])
        self._reply(401, {"detail": "We could not find what you're looking for :/"})  # as Open WebUI does

    def do_POST(self):
        self.calls.append(("POST", self.path))
        if self.headers.get("Authorization") != "Bearer sk-test":
            return self._reply(401, {"detail": "Not authenticated"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"null")
        parts = self.path.split("/")
        if self.path == "/api/v1/functions/create":
            self.functions[body["id"]] = {**body, "is_active": False, "valves": {}}
            return self._reply(200, self.functions[body["id"]])
        fid, verb = parts[-2], parts[-1]
        if verb == "update" and parts[-2] == "valves":
            fid = parts[-3]
            self.functions[fid]["valves"] = body
        elif verb == "update":
            self.functions[fid].update(body)
        elif verb == "toggle":
            self.functions[fid]["is_active"] = not self.functions[fid]["is_active"]
        self._reply(200, self.functions[fid])

    def log_message(self, *args):
        pass


@pytest.fixture
def open_webui():
    FakeOpenWebUI.functions, FakeOpenWebUI.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenWebUI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def main(argv: list[str]) -> int:
    """The `plugins` command alone (so other areas' commands cannot break these tests)."""
    import argparse

    from nanocommander.cli import plugins as commands

    parser = argparse.ArgumentParser(prog="nanocommander")
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_install_creates_then_updates(open_webui, capsys):
    from nanocommander.cli import plugins as commands

    content = commands.FUNCTION_FILE.read_text(encoding="utf-8")  # the file the installed package ships
    argv = ["plugins", "install", "open-webui", "--url", open_webui, "--token", "sk-test"]
    assert main(argv + ["--server-url", "http://nc:11434"]) == 0
    funcs = FakeOpenWebUI.functions
    assert set(funcs) == {"nanocommander", "nanocommander_compare"}
    for fn in funcs.values():
        assert fn["content"] == content and fn["meta"]["description"] and fn["name"]
        assert fn["is_active"] and fn["valves"] == {"server_url": "http://nc:11434"}
    assert "installed nanocommander" in capsys.readouterr().out

    FakeOpenWebUI.calls.clear()
    assert main(argv) == 0
    assert ("POST", "/api/v1/functions/id/nanocommander/update") in FakeOpenWebUI.calls
    assert ("POST", "/api/v1/functions/create") not in FakeOpenWebUI.calls
    assert all(fn["is_active"] for fn in funcs.values())  # not toggled off again
    assert "updated nanocommander_compare" in capsys.readouterr().out


def test_install_bad_token_fails(open_webui, capsys):
    assert main(["plugins", "install", "open-webui", "--url", open_webui, "--token", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_function_file_ships_in_the_package():
    from nanocommander.cli import plugins as commands

    assert commands.FUNCTION_FILE.is_file()
    assert importlib.import_module("nanocommander.plugins.open_webui.nanocommander_function").Filter
