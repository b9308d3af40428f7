"""The registry: model names, the local store, Hub pulls and pushes.

Python API (what the CLI and the server call; `Registry()` uses $NANOCOMMANDER_MODELS,
else ~/.nanocommander/models, and reads HF_* env vars at each call):

    from nanocommander.registry import Registry, Name, resolve, estimate_memory

    reg = Registry()                                  # or Registry(root)
    for event in reg.pull("recipe.yaml"): ...         # /api/pull: also "hf.co/user/repo[:tag]" or a stored name
    for event in reg.create("me/tiny", path="r.yaml"): ...   # /api/create (path=, text= or recipe=)
    for event in reg.create_member("pirate", "tiny", "pirate.gguf"): ...  # adapter family (registry.family)
    for event in reg.push("tiny", "hf.co/me/tiny"): ...      # /api/push
    reg.list()            -> [ModelEntry]   .to_ollama() is one /api/tags entry
    reg.show("tiny")      -> ModelDetails   .to_dict() for /api/show (members, alpha, memory estimate)
    reg.copy("tiny", "tiny2")               # /api/copy
    reg.delete("tiny")    -> (Name, freed blob digests)   # /api/delete
    reg.verify(fix=False) -> VerifyReport
    reg.resolve("tiny")   -> Recipe whose member sources are local blob paths (for the engine)
    reg.estimate("tiny", num_ctx=None) -> MemoryEstimate (.total, .free, .fits)

Event iterators yield Ollama-shaped dicts ({"status": ...} and, while moving bytes,
"digest", "total", "completed"), end with {"status": "success"}, and raise on failure
(so a server turns the exception into its last NDJSON line). They work lazily on a
helper thread; closing one early cancels the transfer and keeps the partial file.
Errors: InvalidName (bad name, nothing touched), ModelNotFound, DigestMismatch,
RegistryError (network, disk full, Hub), RecipeError -- all from nanocommander.errors.
"""

from __future__ import annotations

from nanocommander.engine.request.recipe import Recipe
from nanocommander.engine.runtime.memory import MemoryEstimate, estimate_memory
from nanocommander.gguf_file import read_gguf
from nanocommander.registry.api import MemberDetails, ModelDetails, ModelEntry, Registry, VerifyReport
from nanocommander.registry.name import Name
from nanocommander.registry.store import Store, models_dir


def resolve(name: str) -> Recipe:
    """The stored model `name` as a Recipe whose members are local blob paths (see Registry.resolve)."""
    return Registry().resolve(name)


__all__ = [
    "MemberDetails",
    "MemoryEstimate",
    "ModelDetails",
    "ModelEntry",
    "Name",
    "Registry",
    "Store",
    "VerifyReport",
    "estimate_memory",
    "models_dir",
    "read_gguf",
    "resolve",
]
