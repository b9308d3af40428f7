"""Find a model's GGUF in a local Ollama store, so `ollama: llama3.1:8b` members need no download.

Root: $OLLAMA_MODELS, else ~/.ollama/models (read at call time). Names follow Ollama's
defaults (host registry.ollama.ai, namespace library, tag latest) and are looked up
case-insensitively; the weights are the manifest's `application/vnd.ollama.image.model` layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nanocommander.errors import InvalidName, RegistryError
from nanocommander.registry.name import DEFAULT_HOST, Name
from nanocommander.registry.store import MODEL_TYPE, Store, parse_digest

OLLAMA_HOST = "registry.ollama.ai"


def ollama_models_dir() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def ollama_blob(ref: str) -> tuple[Path, str]:
    """(path of the GGUF blob, its sha256 hex) for an Ollama model name.

    Raises:
        RegistryError: the name is invalid, not in the Ollama store, or has no model layer.
    """
    try:
        name = Name.parse(ref)
    except InvalidName as exc:
        raise RegistryError(f"ollama source: {exc}") from None
    if name.host == DEFAULT_HOST:
        name = Name(OLLAMA_HOST, name.namespace, name.model, name.tag)
    root = ollama_models_dir()
    hit = Store(root).find(name)
    if hit is None:
        raise RegistryError(
            f"ollama model '{ref}' not found under {root}; run `ollama pull {ref}` or set OLLAMA_MODELS"
        )
    try:
        doc = json.loads(hit[1].read_bytes())
        layers = [x for x in doc.get("layers", []) if x.get("mediaType") == MODEL_TYPE]
    except (OSError, ValueError, AttributeError) as exc:
        raise RegistryError(f"ollama manifest of '{ref}' is unreadable: {exc}") from None
    if not layers:
        raise RegistryError(
            f"ollama model '{ref}' has no GGUF model layer (safetensors models are not supported)"
        )
    hexdigest = parse_digest(layers[0]["digest"])
    path = root / "blobs" / f"sha256-{hexdigest}"
    if not path.is_file():
        raise RegistryError(f"ollama blob {path} is missing; run `ollama pull {ref}` again")
    return path, hexdigest
