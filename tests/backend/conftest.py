"""Live NanoCommander servers on loopback over the tiny models (tests/helpers.py: LiveServer), per module."""

from __future__ import annotations

import pytest
from helpers import LiveServer, free_port, recipe_yaml

from nanocommander.backend.config import Settings
from nanocommander.engine.request.recipe import Recipe

# An inline chat template that renders tools (ChatML plus a tools block), a system prompt and parameters.
TOOLS_EXTRA = """system: You are terse.
parameters: {temperature: 0, stop: ["<|im_end|>"], num_ctx: 1024}
template: |-
  {% if tools %}<|im_start|>system
  Tools: {{ tools | tojson }}<|im_end|>
  {% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}
  {{ message['content'] }}<|im_end|>
  {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
  {% endif %}
"""


def tiny_recipe(tiny, name: str, *, adapter: bool = False, alpha: float = 1.0, extra: str = "") -> Recipe:
    return Recipe.parse(recipe_yaml(tiny, name, adapter=adapter, alpha=alpha, extra=extra), check_files=True)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCOMMANDER_MODELS", str(tmp_path_factory.mktemp("store")))
    settings = Settings(port=free_port(), max_body=64 * 1024, keep_alive=300, max_queue=16)
    recipes = [
        tiny_recipe(tiny, "tiny", extra="parameters: {num_ctx: 1024}\n"),
        tiny_recipe(tiny, "tiny-lora", adapter=True),
        tiny_recipe(tiny, "tiny-tools", alpha=0.5, extra=TOOLS_EXTRA),
    ]
    live = LiveServer(settings, recipes).start()
    yield live
    live.stop()
    mp.undo()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Start extra live servers for one module (own settings and recipes); all stop at its end."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCOMMANDER_MODELS", str(tmp_path_factory.mktemp("store")))
    started: list[LiveServer] = []

    def start(recipes: list[Recipe], **settings) -> LiveServer:
        live = LiveServer(Settings(port=free_port(), **settings), recipes).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
    mp.undo()


@pytest.fixture(scope="module")
def recipe_of(tiny):
    """tiny_recipe bound to the session's tiny models."""
    return lambda name, **kw: tiny_recipe(tiny, name, **kw)
