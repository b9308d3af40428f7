"""Pull, copy and delete through the Ollama API, with the official client's progress stream."""

from __future__ import annotations

import ollama
import pytest

try:
    from nanocommander.registry import Registry  # noqa: F401
except ImportError:
    pytest.skip("the registry is not available in this build", allow_module_level=True)


def test_pull_a_recipe_then_copy_and_delete(server, tiny, tmp_path):
    recipe = tmp_path / "pulled.yaml"
    recipe.write_text(
        f"name: pulled\nmembers:\n  large: {{path: {tiny['large']}}}\n  base: {{path: {tiny['base']}}}\n"
        f"  tuned: {{adapter: {tiny['lora']}}}\n"
    )
    client = ollama.Client(host=server.url)
    events = list(client.pull(str(recipe), stream=True))
    assert events[-1].status == "success"
    names = {m.model for m in client.list().models}
    assert "pulled:latest" in names
    assert client.chat(
        "pulled", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    ).done
    client.copy("pulled", "pulled-copy")
    assert "pulled-copy:latest" in {m.model for m in client.list().models}
    client.delete("pulled")
    names = {m.model for m in client.list().models}
    assert "pulled:latest" not in names and "pulled-copy:latest" in names
    assert client.chat(
        "pulled-copy", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}
    ).done
