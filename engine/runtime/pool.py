"""Loaded llama models shared between members and composites.

Two recipes over the same large and base files cost only what differs (their
adapters and KV caches): the weights are loaded once and reference-counted.
A model whose RPC server was lost is never handed out or freed again (see engine/llama/rpc/devices.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from nanocommander.engine.llama.member import LoadedModel
from nanocommander.engine.llama.rpc.devices import Placement, is_lost, strand


class ModelPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[Path, int, Placement | None], list] = {}  # key -> [LoadedModel, refcount]

    def acquire(self, path: Path, gpu_layers: int = 0, rpc: Placement | None = None) -> LoadedModel:
        key = (Path(path).resolve(), gpu_layers, rpc)
        with self._lock:
            entry = self._models.get(key)
            if entry is not None and is_lost(entry[0]):  # load it afresh, over a new connection
                strand(self._models.pop(key)[0])
                entry = None
            if entry is None:
                entry = self._models[key] = [LoadedModel(key[0], gpu_layers, rpc), 0]
            entry[1] += 1
            return entry[0]

    def release(self, model: LoadedModel) -> None:
        closing = None
        with self._lock:
            for key, entry in list(self._models.items()):
                if entry[0] is model:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._models[key]
                        closing = model
                    break
        if closing is not None:  # outside the lock: freeing remote buffers is a network round trip
            if is_lost(closing):
                strand(closing)
            else:
                closing.close()

    def loaded(self) -> list[Path]:
        with self._lock:
            return [key[0] for key in self._models]
