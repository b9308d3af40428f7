"""The Open WebUI function, loaded the way Open WebUI loads it, and the `plugins install open-webui` command."""

from __future__ import annotations

import importlib
import json
import re
import sys
import threading
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
import pytest
from helpers import free_port

FUNCTION_DIR = Path(__file__).parents[2] / "plugins" / "open_webui"
FILTER_FILE = FUNCTION_DIR / "nanocommander_filter.py"
COMPARE_FILE = FUNCTION_DIR / "nanocommander_compare.py"
FILES = {"nanocommander": FILTER_FILE, "nanocommander_compare": COMPARE_FILE}  # install id -> file


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


def load_function(function_id: str, path: Path | None = None, module_name: str | None = None):
    """As Open WebUI 0.12.4's load_function_module_by_id (utils/plugin.py): rewrite the `from utils`-style
    imports, exec the text into a fresh module `function_<id>_<uuid hex>` (registered in sys.modules only
    while it runs), then instantiate the first of Pipe, Filter, Action, Event the module has.

    Returns (instance, kind, module)."""
    content = (path or FILES[function_id]).read_text(encoding="utf-8")
    for old, new in {"from utils": "from open_webui.utils", "from main": "from open_webui.main"}.items():
        content = content.replace(old, new)
    name = module_name or f"function_{function_id}_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        module.__dict__["__file__"] = str(path or FILES[function_id])
        exec(content, module.__dict__)
        for cls, kind in (("Pipe", "pipe"), ("Filter", "filter"), ("Action", "action"), ("Event", "event")):
            if hasattr(module, cls):
                return getattr(module, cls)(), kind, module
        raise AssertionError("No Function class found in the module")
    finally:
        sys.modules.pop(name, None)


def load(function_id: str = "nanocommander") -> types.ModuleType:
    return load_function(function_id)[2]


def test_metadata_and_kinds_under_the_real_module_name():
    for fid, path in FILES.items():
        meta = frontmatter(path.read_text(encoding="utf-8"))
        for key in ("title", "author", "version", "required_open_webui_version", "description"):
            assert meta.get(key), (path.name, key)
        assert fid in meta["description"]  # each file says which id it is installed under
    flt, kind, module = load_function("nanocommander")
    assert kind == "filter" and re.fullmatch(r"function_nanocommander_[0-9a-f]{32}", module.__name__)
    assert isinstance(flt.valves, flt.Valves) and flt.UserValves().alpha is None
    assert not hasattr(module, "Action")
    action, kind, module = load_function("nanocommander_compare")
    assert kind == "action" and re.fullmatch(r"function_nanocommander_compare_[0-9a-f]{32}", module.__name__)
    assert isinstance(action.valves, action.Valves) and action.valves.filter_id == "nanocommander"
    assert action.valves.num_predict == 256  # three replies per click: bounded by default
    assert not hasattr(module, "Filter") and not hasattr(module, "Pipe")
    assert not hasattr(action, "UserValves")  # one alpha per user: the Filter's


def test_kind_does_not_depend_on_the_module_name():
    """Older Open WebUI named the module `function_<id>`; any name gives the same kind."""
    for name in ("function_nanocommander_compare", "function_x", "anything"):
        assert load_function("nanocommander_compare", module_name=name)[1] == "action"
        assert load_function("nanocommander", module_name=name)[1] == "filter"
    assert load_function("nanocommander_compare", FILTER_FILE)[1] == "filter"  # the file decides, not the id


def test_shared_block_is_the_same_in_both_files():
    def shared(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[text.index("# --- shared:") : text.index("# --- end of shared")]

    assert shared(FILTER_FILE) == shared(COMPARE_FILE)


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
    assert "a\\|b" in md and "line1 line2" in md and "\\<x\\>" in md  # 0.12 shows entities literally
    assert "&" not in md and "<br>" not in md
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


@pytest.fixture
def stored_user_valves(monkeypatch):
    """Open WebUI's store of user valves (open_webui.models.functions.Functions), as 0.12.4 has it: async."""
    store: dict[tuple[str, str], dict] = {}

    class Functions:
        @staticmethod
        async def get_user_valves_by_id_and_user_id(function_id: str, user_id: str) -> dict | None:
            return store.get((function_id, user_id))

    for name in ("open_webui", "open_webui.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(
        sys.modules, "open_webui.models.functions", types.SimpleNamespace(Functions=Functions)
    )
    return store


def table_cells(content: str) -> list[str]:
    row = content.strip().splitlines()[-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip()[1:-1])]  # `\|` inside a cell is text


async def test_action_side_by_side_against_backend(live_server, stored_user_valves):
    action, _, module = load_function("nanocommander_compare")
    action.valves = module.Valves(server_url=live_server, timeout=120)
    stored_user_valves[("nanocommander", "u1")] = {"alpha": 0.5}  # set on the Filter, as users do
    events = []

    async def emit(event):
        events.append(event)

    body = {  # what the 0.12 page posts: the chat up to the replied-to message, whose id is body["id"]
        "model": "tiny:latest",
        "chat_id": "c1",
        "id": "m2",
        "messages": [
            {"id": "m1", "role": "user", "content": "Hello"},
            {"id": "m2", "role": "assistant", "content": "Hi"},
        ],
    }
    result = await action.action(body, __user__={"id": "u1", "role": "user"}, __event_emitter__=emit)
    # The page applies result["messages"] to the message and its `output` (what 0.12 draws).
    assert [m["id"] for m in result["messages"]] == ["m2"]
    content = result["messages"][0]["content"]
    assert content.startswith("Hi\n\n### NanoCommander: side by side") and result["content"] == content
    assert "| Large alone | Tuned (small) | Composite (alpha 0.5) |" in content
    cells = table_cells(content)
    assert len(cells) == 3 and all(c and "(error" not in c and "(no reply" not in c for c in cells), content
    assert not [e for e in events if e["type"] in ("message", "replace")]  # 0.12 would not draw them
    assert events[-1] == {"type": "status", "data": {"description": "Comparison done", "done": True}}
    assert cells[0] != cells[1]  # large and tuned are different models

    again = await action.action({**body, "messages": [body["messages"][0], {"id": "m2", "content": content}]})
    assert again["messages"][0]["content"].count("### NanoCommander") == 1  # a second click: one table

    stored_user_valves[("nanocommander", "u1")] = {"alpha": 0.0}  # composite at alpha 0 is the large
    zero = await action.action(body, __user__={"id": "u1"})
    large, _, composite = table_cells(zero["content"])
    assert composite == large == cells[0]


async def test_action_alpha_sources(stored_user_valves):
    action, _, module = load_function("nanocommander_compare")
    action.valves = module.Valves(default_alpha=1.5, filter_id="my_filter")
    stored_user_valves[("my_filter", "u1")] = {"alpha": 0.25}
    assert action.alpha_for(await action.user_valves({"id": "u1"})) == 0.25
    assert action.alpha_for(await action.user_valves({"id": "u2"})) == 1.5  # none stored: admin default
    assert action.alpha_for(await action.user_valves({"id": "u1", "valves": {"alpha": 2.0}})) == 2.0
    stored_user_valves[("my_filter", "u3")] = {"alpha": 99}  # invalid: admin default, no error
    assert action.alpha_for(await action.user_valves({"id": "u3"})) == 1.5
    assert action.alpha_for(await action.user_valves(None)) == 1.5


async def test_action_reports_server_errors(live_server):
    action, _, module = load_function("nanocommander_compare")
    action.valves = module.Valves(server_url=live_server)
    result = await action.action({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert result["content"].count("(error 404") == 3
    assert "messages" not in result  # no message id given: nothing to write back


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
        parts = self.path.split("/")
        if parts[-1] == "valves" and parts[-2] in self.functions:
            return self._reply(200, self.functions[parts[-2]]["valves"] or None)
        fid = parts[-1]
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
            self.functions[body["id"]] = {**body, "is_active": False, "is_global": False, "valves": {}}
            return self._reply(200, self.functions[body["id"]])
        fid, verb = parts[-2], parts[-1]
        if verb == "update" and parts[-2] == "valves":
            fid = parts[-3]
            self.functions[fid]["valves"] = body
        elif verb == "update":
            self.functions[fid].update(body)
        elif verb == "toggle":
            self.functions[fid]["is_active"] = not self.functions[fid]["is_active"]
        elif verb == "global":
            fid = parts[-3]
            self.functions[fid]["is_global"] = not self.functions[fid]["is_global"]
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

    argv = ["plugins", "install", "open-webui", "--url", open_webui, "--token", "sk-test"]
    assert main(argv + ["--server-url", "http://nc:11434"]) == 0
    funcs = FakeOpenWebUI.functions
    assert set(funcs) == {"nanocommander", "nanocommander_compare"}
    for fid, _, _, _ in commands.FUNCTIONS:  # each id gets its own file, the one the package ships
        fn = funcs[fid]
        assert fn["content"] == FILES[fid].read_text(encoding="utf-8") and fn["meta"]["description"]
        assert fn["is_active"] and not fn["is_global"] and fn["valves"] == {"server_url": "http://nc:11434"}
    assert "installed nanocommander" in capsys.readouterr().out

    FakeOpenWebUI.calls.clear()
    funcs["nanocommander"]["valves"] = {"server_url": "http://nc:11434", "default_alpha": 2.0}  # admin's edit
    assert main(argv + ["--server-url", "http://other:11434", "--global"]) == 0
    assert ("POST", "/api/v1/functions/id/nanocommander/update") in FakeOpenWebUI.calls
    assert ("POST", "/api/v1/functions/create") not in FakeOpenWebUI.calls
    assert funcs["nanocommander"]["valves"] == {"server_url": "http://other:11434", "default_alpha": 2.0}
    assert all(fn["is_active"] and fn["is_global"] for fn in funcs.values())  # not toggled off again
    assert "updated nanocommander_compare" in capsys.readouterr().out
    assert main(argv + ["--global"]) == 0
    assert all(fn["is_global"] for fn in funcs.values())  # already global: left so


def test_install_bad_token_fails(open_webui, capsys):
    assert main(["plugins", "install", "open-webui", "--url", open_webui, "--token", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_function_files_ship_in_the_package():
    from nanocommander.cli import plugins as commands

    assert [path.name for _, path, _, _ in commands.FUNCTIONS] == [FILTER_FILE.name, COMPARE_FILE.name]
    assert all(path.is_file() for _, path, _, _ in commands.FUNCTIONS)
    assert importlib.import_module("nanocommander.plugins.open_webui.nanocommander_filter").Filter
    assert importlib.import_module("nanocommander.plugins.open_webui.nanocommander_compare").Action
