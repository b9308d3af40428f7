"""The Ollama API: pure wire translators (api) and the HTTP routes (routes, registry_routes)."""
