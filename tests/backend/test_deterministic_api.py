"""/api/show and /api/ps say whether the reproducible mode is on and what it costs (docs/reproducibility.md)."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def live(start_server, recipe_of):
    return start_server(
        [
            recipe_of("exact", extra="parameters: {num_ctx: 512, deterministic: true}\n"),
            recipe_of("loose", extra="parameters: {num_ctx: 512}\n"),
        ]
    )


def test_show_and_ps_state_the_mode_and_its_cost(live):
    for name, on in (("exact", True), ("loose", False)):
        shown = httpx.post(f"{live.url}/api/show", json={"model": name}).json()["composite"]["deterministic"]
        assert shown["enabled"] is on
        assert ("cost" in shown) is on and ("note" in shown) is not on
        body = {
            "model": name,
            "prompt": "hi",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 4},
        }
        assert httpx.post(f"{live.url}/api/generate", json=body, timeout=60).status_code == 200
        entry = next(
            m for m in httpx.get(f"{live.url}/api/ps").json()["models"] if m["model"] == f"{name}:latest"
        )
        assert entry["composite"]["deterministic"]["enabled"] is on
    assert "deterministic" in httpx.post(f"{live.url}/api/show", json={"model": "exact"}).json()["parameters"]
