"""The server: Ollama, OpenAI and KoboldCpp wire protocols over composite models.

How the pieces fit (every protocol follows the same pattern)::

    commands.py        `nanocommander serve [RECIPE ...]`: Settings from CLI + env, then run the app
    config.py          Settings (one dataclass, read once at startup; env NANOCOMMANDER_*)
    server.py          create_app(settings, recipes) -> web.Application; app state under web.AppKey
                       (SETTINGS, MANAGER); the one middleware (CORS, bearer key, body cap, errors);
                       cleanup_ctx starts/stops the model manager
    manager.py         ModelManager: load on first use (in a thread), keep_alive (0 unloads once the
                       model's requests end), per-model queue (NANOCOMMANDER_NUM_PARALLEL slots batched together,
                       NANOCOMMANDER_MAX_QUEUE waiting -> 503), shared weights through one engine
                       ModelPool, a memory check before loading (the registry's estimate)
    translate.py       shared by all protocols: validated options -> GenerateRequest, model facts
    streaming.py       NDJSON / SSE writer: one object per write; errors before the first byte get a
                       status, errors after it end the stream with an error object; leaving cancels
    <proto>_api.py     PURE translators, no aiohttp and no models: wire body -> parsed call ->
    (kobold_fields.py)   GenerateRequest, Chunk -> wire object, the protocol's error envelope
    <proto>_routes.py  thin handlers + setup_routes(app): parse, get the model from the manager,
                       stream chunks through the translators
    registry_routes.py Ollama's pull/push/create/copy/delete/blobs over nanocommander.registry
                       (create: a recipe, `from` an existing model, or `files` = one uploaded GGUF)

Errors: handlers raise the exceptions of nanocommander.errors (never build error bodies);
the middleware maps the class to a status (server.STATUS) and the path to the protocol's
envelope (`{"error": msg}`, OpenAI's `{"error": {message, type, param, code}}`, Kobold's
`{"detail": {msg, type}}`). Unexpected exceptions become a 500 in the same envelope, logged,
never a traceback on the wire.

Composite knobs, in every protocol: `options.alpha` (top-level `alpha` in OpenAI and Kobold
bodies) overrides the recipe's alpha for one request; `options.member` (top-level `member`)
is one of `composite|large|base|tuned` and answers with that member's own reply (alpha is
then ignored) -- the plugins use it for side-by-side comparisons. `/api/show` and each
`/v1/models` item carry `"composite": {"alpha": .., "members": {role: facts}}`.

Adding a protocol: write `<proto>_api.py` (pure, unit-tested without HTTP) and
`<proto>_routes.py` with `setup_routes(app)`, register it in server.create_app, and add
its path prefix and envelope to server.error_response.
"""
