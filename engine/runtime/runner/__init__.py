"""Runner processes: each loaded composite, or adapter family, in a child process of its own.

llama.cpp ends its process with abort() on a failed GGML_ASSERT or a lost RPC connection; in a
runner that costs the one model (its streams end with an error naming it, and its next request
loads it again), not the server and every other model. As Ollama does with `ollama runner`, the
server starts a runner on a model's first use and stops it on unload or keep_alive expiry.

- `child.py`: the runner's side (`python -m nanocommander.engine.runtime.runner FD`): it loads the
  recipe's Composite or Family and serves requests; members, scheduler and sampling stay in it,
  so logits never cross the boundary: GenerateRequests go in, Chunks come out.
- `proxy.py`: the server's side: `Runner` (the process, its connection, its stderr tail, the
  watchdog) and `RemoteComposite`, which has the Composite interface the manager and protocols use.
- `wire.py`: the framed messages (multiprocessing Connection over a Unix socketpair: length-prefixed
  pickles) and how errors cross.
"""

from nanocommander.engine.runtime.runner.proxy import RemoteComposite, Runner

__all__ = ["RemoteComposite", "Runner"]
