"""Loaded llama models shared between members and composites.

Two recipes over the same large and base files cost only what differs (their
adapters and KV caches): the weights are loaded once and reference-counted.
"""

from __future__ import annotations

import threading
from pathlib import Path

from nanocommander.engine.member import LoadedModel


class ModelPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[Path, int], list] = {}  # key -> [LoadedModel, refcount]

    def acquire(self, path: Path, gpu_layers: int = 0) -> LoadedModel:
        key = (Path(path).resolve(), gpu_layers)
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                entry = self._models[key] = [LoadedModel(key[0], gpu_layers), 0]
            entry[1] += 1
            return entry[0]

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            for key, entry in list(self._models.items()):
                if entry[0] is model:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._models[key]
                        model.close()
                    return

    def loaded(self) -> list[Path]:
        with self._lock:
            return [key[0] for key in self._models]
