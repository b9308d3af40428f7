"""llama.cpp behind the engine: members, their sampler, vocabularies, embeddings, logs, RPC."""
