"""Chat templates of the three tool-call families, abridged from the models' own, and recipes over them.

Each keeps what matters here: the tools block, how an assistant's tool calls and a tool's
result are written back, and the markers that identify the family. The tiny models get
`[TOOL_CALLS]` and `<|python_tag|>` as control tokens, as the real vocabularies have them.
"""

from __future__ import annotations

from pathlib import Path

import tiny_models

EXTRA_SPECIALS = ("[TOOL_CALLS]", "<|python_tag|>")

HERMES = """{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

LLAMA3 = """{{ bos_token }}
{%- if tools %}<|start_header_id|>system<|end_header_id|>

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|eot_id|>
{%- endif %}
{%- for message in messages %}
{%- set role = "ipython" if message.role == "tool" else message.role %}<|start_header_id|>{{ role }}<|end_header_id|>

{% if message.tool_calls %}{% for tc in message.tool_calls %}{"name": "{{ tc.function.name }}", "parameters": {{ tc.function.arguments | tojson }}}{% endfor %}{% else %}{{ message.content }}{% endif %}<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

MISTRAL = """{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}
{%- for message in messages %}
{%- if message.role == "user" %}[INST]{{ message.content }}[/INST]
{%- elif message.tool_calls %}[TOOL_CALLS][
{%- for tc in message.tool_calls %}{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}, "id": "{{ tc.id }}"}{% if not loop.last %}, {% endif %}{% endfor %}]<|im_end|>
{%- elif message.role == "tool" %}[TOOL_RESULTS]{"content": {{ message.content | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- else %}{{ message.content }}<|im_end|>
{%- endif %}
{%- endfor %}"""

TEMPLATES = {"hermes": HERMES, "llama3": LLAMA3, "mistral": MISTRAL}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, CLOCK]


def write_models(folder: Path) -> dict[str, Path]:
    """A large/base/tuned triple whose vocabulary has the tool-call control tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"extra_specials": EXTRA_SPECIALS}
    return {
        "large": tiny_models.write_model(folder / "large.gguf", seed=1, shape=tiny_models.LARGE, **kw),
        "base": tiny_models.write_model(folder / "base.gguf", seed=2, **kw),
        "tuned": tiny_models.write_model(folder / "tuned.gguf", seed=3, **kw),
    }


def recipe_text(models: dict[str, Path], family: str, *, name: str | None = None, extra: str = "") -> str:
    template = "\n".join("  " + line for line in TEMPLATES[family].splitlines())
    return (
        f"name: {name or 'tools-' + family}\nmembers:\n  large: {{path: {models['large']}}}\n"
        f"  base: {{path: {models['base']}}}\n  tuned: {{path: {models['tuned']}}}\nalpha: 0.5\n"
        f"parameters: {{temperature: 0, num_ctx: 1024, num_predict: 96}}\n"
        f"template: |-\n{template}\n{extra}"
    )
