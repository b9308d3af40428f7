"""JSON mode and JSON-schema outputs as GBNF grammars for llama.cpp's grammar sampler."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from nanocommander.errors import InvalidRequest


def json_grammar(schema: dict[str, Any] | None = None) -> str:
    """GBNF for any JSON value (schema None) or for values matching a JSON schema."""
    if not schema:
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions and KeyErrors on bad schemas
        raise InvalidRequest(f"unsupported JSON schema: {exc}") from None
