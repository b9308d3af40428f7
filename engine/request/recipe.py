"""The `Recipe` type: a composite model declared in a Modelfile-like YAML file.

    name: qwen-pirate
    members:
      large: {path: models/large.gguf, gpu_layers: -1, rpc: ["10.0.0.5:50052"]}
      base:  {hf: Qwen/Qwen2.5-0.5B-GGUF, file: q4.gguf, revision: abc, sha256: ...}
      tuned: {adapter: adapters/pirate.gguf}      # a LoRA on base, or {path: ...}
    alpha: 1.0
    template: tuned          # large | base | tuned | inline Jinja
    system: "You are ..."
    parameters: {temperature: 0.7, stop: ["<|im_end|>"]}

Parsing keeps every key's line so errors read `file:line: key: message`. Relative
paths resolve against the recipe's folder. Hub sources are validated here and
downloaded by the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nanocommander.digest import hex_of
from nanocommander.engine.request.decode_options import (
    RECOMMENDED,
    Speculation,
    Steer,
    parse_speculative,
    parse_steer,
)
from nanocommander.engine.request.endpoints import parse_endpoint
from nanocommander.engine.request.members import ROLES, MemberSpec, Source
from nanocommander.engine.request.options import (
    CONTROL_KEYS,
    IGNORED_KEYS,
    LOAD_KEYS,
    SAMPLING_KEYS,
    check_value,
)
from nanocommander.errors import InvalidRequest, RecipeError

TOP_KEYS = (
    "name",
    "description",
    "members",
    "alpha",
    "template",
    "system",
    "parameters",
    "license",
    "messages",
    "tool_parser",
    "embedding",
    "steer",
    "speculative",
)
TOOL_PARSERS = ("hermes", "llama3", "mistral")
SOURCE_KEYS = ("path", "hf", "file", "revision", "sha256", "ollama")
MEMBER_KEYS = (
    *SOURCE_KEYS,
    "adapter",
    "adapter_scale",
    "gpu_layers",
    "n_ctx",
    "threads",
    "rpc",
    "tensor_split",
)
PARAM_KEYS = tuple(
    k
    for k in (*SAMPLING_KEYS, *CONTROL_KEYS, *LOAD_KEYS)
    if k not in ("alpha", "member", "steer", "speculative")
)
HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
RECIPE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class Recipe:
    name: str
    large: MemberSpec
    base: MemberSpec
    tuned: MemberSpec
    alpha: float = 1.0
    template: str = "tuned"  # a role name, or inline Jinja
    system: str | None = None
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None
    messages: tuple[Mapping[str, str], ...] = ()
    steer: Steer | None = None  # None: plain proxy-tuning
    speculative: Speculation | None = None  # None: the engine's default drafting
    path: Path | None = None  # the file it was read from, if any
    tool_parser: str | None = None  # hermes | llama3 | mistral; None: detect from the chat template
    embedding: Source | None = None  # the GGUF that embeds; None: the large member

    def member(self, role: str) -> MemberSpec:
        return {"large": self.large, "base": self.base, "tuned": self.tuned}[role]

    @property
    def members(self) -> tuple[MemberSpec, MemberSpec, MemberSpec]:
        return (self.large, self.base, self.tuned)

    def replace_member(self, role: str, spec: MemberSpec) -> Recipe:
        return dataclasses.replace(self, **{role: spec})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["members"] = {m.role: m.to_dict() for m in self.members}
        out["alpha"] = self.alpha
        out["template"] = self.template
        if self.system is not None:
            out["system"] = self.system
        if self.parameters:
            out["parameters"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()
            }
        if self.license:
            out["license"] = self.license
        if self.messages:
            out["messages"] = [dict(m) for m in self.messages]
        if self.steer is not None:
            out["steer"] = "recommended" if self.steer == RECOMMENDED else self.steer.to_dict()
        if self.speculative is not None:
            out["speculative"] = self.speculative.to_dict()
        if self.tool_parser:
            out["tool_parser"] = self.tool_parser
        if self.embedding is not None:
            out["embedding"] = self.embedding.to_dict()
        return out

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError("recipe file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None
        return cls.parse(text, file=str(path), base_dir=path.parent, check_files=True)

    @classmethod
    def parse(
        cls, text: str, *, file: str = "<recipe>", base_dir: Path | None = None, check_files: bool = False
    ) -> Recipe:
        return _Parser(file, base_dir or Path.cwd(), check_files).parse(text)


class _Parser:
    """Turns YAML nodes into a Recipe, remembering each node's line for error messages."""

    def __init__(self, file: str, base_dir: Path, check_files: bool):
        self.file, self.base_dir, self.check_files = file, base_dir, check_files

    def error(self, node: yaml.Node | None, key: str | None, message: str) -> RecipeError:
        line = node.start_mark.line + 1 if node is not None else None
        return RecipeError(message, file=self.file, line=line, key=key)

    def parse(self, text: str) -> Recipe:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise RecipeError(f"invalid YAML: {problem}", file=self.file, line=line) from None
        if root is None:
            raise RecipeError("empty recipe", file=self.file, line=1)
        top = self.mapping(root, None, TOP_KEYS)
        for required in ("name", "members"):
            if required not in top:
                raise self.error(root, required, "missing required key")
        name = self.string(top["name"], "name")
        if not RECIPE_NAME.match(name):
            raise self.error(top["name"][1], "name", "use letters, digits, '_', '-', '.' (at most 80)")
        members_node = top["members"][0]  # point at the `members:` line itself
        members = self.mapping(top["members"], "members", ROLES)
        specs = {}
        for role in ROLES:
            if role not in members:
                raise self.error(members_node, f"members.{role}", "missing required member")
            specs[role] = self.member(members[role], role)
        for role in ("large", "base"):
            if specs[role].is_adapter:
                raise self.error(
                    members[role][1], f"members.{role}.adapter", "only the tuned member may be an adapter"
                )
        alpha = self.alpha(top["alpha"]) if "alpha" in top else 1.0
        template = self.string(top["template"], "template") if "template" in top else "tuned"
        if template not in ROLES and "{{" not in template and "{%" not in template:
            raise self.error(
                top["template"][1], "template", "expected large, base, tuned or an inline Jinja template"
            )
        return Recipe(
            name=name,
            large=specs["large"],
            base=specs["base"],
            tuned=specs["tuned"],
            alpha=alpha,
            template=template,
            system=self.string(top["system"], "system") if "system" in top else None,
            description=self.string(top["description"], "description") if "description" in top else None,
            parameters=self.parameters(top["parameters"]) if "parameters" in top else {},
            license=self.string(top["license"], "license") if "license" in top else None,
            messages=self.messages(top["messages"]) if "messages" in top else (),
            steer=self.decoding(top, "steer", parse_steer),
            speculative=self.decoding(top, "speculative", parse_speculative),
            tool_parser=self.choice(top["tool_parser"], "tool_parser", TOOL_PARSERS)
            if "tool_parser" in top
            else None,
            embedding=self.embedding(top["embedding"]) if "embedding" in top else None,
            path=(self.base_dir / Path(self.file).name) if self.file != "<recipe>" else None,
        )

    # -- node helpers: each takes (key_node, value_node) pairs keyed by name -----------------

    def mapping(
        self, pair, key: str | None, known: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        node = pair if isinstance(pair, yaml.Node) else pair[1]
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, "expected a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = str(knode.value)
            full = f"{key}.{name}" if key else name
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
                raise self.error(knode, full, f"unknown key{hint}")
            if name in out:
                raise self.error(knode, full, "duplicate key")
            out[name] = (knode, vnode)
        return out

    def scalar(self, pair, key: str) -> Any:
        node = pair[1]
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, "expected a single value")
        return _construct(node)

    def string(self, pair, key: str) -> str:
        value = self.scalar(pair, key)
        if not isinstance(value, str):
            raise self.error(pair[1], key, f"expected a string, got {type(value).__name__}")
        return value

    def number(self, pair, key: str) -> float:
        value = self.scalar(pair, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(pair[1], key, f"expected a number, got {type(value).__name__}")
        return float(value)

    def alpha(self, pair) -> float:
        """A number within the engine's bounds (engine/request/options.py: finite, |alpha| <= 100)."""
        value = self.number(pair, "alpha")
        try:
            return check_value("alpha", value)
        except InvalidRequest as exc:
            raise self.error(pair[1], "alpha", str(exc).split('" ', 1)[-1]) from None

    def choice(self, pair, key: str, allowed: tuple[str, ...]) -> str:
        value = self.string(pair, key)
        if value not in allowed:
            raise self.error(pair[1], key, f"expected one of {', '.join(allowed)}")
        return value

    def embedding(self, pair) -> Source:
        node = pair[1]
        if isinstance(node, yaml.ScalarNode):  # shorthand: `embedding: models/embed.gguf`
            return self.source({"path": pair}, "embedding", node)
        fields = self.mapping(pair, "embedding", ("path", "sha256"))
        return self.source(fields, "embedding", node)

    def integer(self, pair, key: str) -> int:
        value = self.scalar(pair, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(pair[1], key, f"expected an integer, got {type(value).__name__}")
        return value

    def source(self, fields: dict, key: str, node: yaml.Node) -> Source:
        kinds = [k for k in ("path", "hf", "ollama") if k in fields]
        if len(kinds) != 1:
            raise self.error(node, key, "give exactly one of path, hf or ollama")
        values = {k: self.string(fields[k], f"{key}.{k}") for k in SOURCE_KEYS if k in fields}
        if kinds == ["path"]:
            for extra in ("file", "revision", "sha256"):
                if extra in values and extra != "sha256":
                    raise self.error(fields[extra][0], f"{key}.{extra}", "only valid with hf")
            path = Path(values["path"]).expanduser()
            path = path if path.is_absolute() else (self.base_dir / path)
            # a path pinned by sha256 may have moved: the store finds its blob by digest
            if self.check_files and not path.is_file() and "sha256" not in values:
                raise self.error(fields["path"][1], f"{key}.path", f"file not found: {path}")
            values["path"] = path  # type: ignore[assignment]
        if "hf" in values:
            repo = values["hf"]
            repo = repo.removeprefix("hf.co/").removeprefix("huggingface.co/")
            if ":" in repo and "file" not in values:  # Ollama-style quant tag: hf.co/user/repo:Q4_K_M
                repo, values["file"] = repo.split(":", 1)
            if not HF_REPO.match(repo) or ".." in repo:
                raise self.error(fields["hf"][1], f"{key}.hf", "expected a Hub repo id such as user/repo")
            values["hf"] = repo
            if "file" not in values:
                raise self.error(
                    node, f"{key}.file", "hf sources need file: (a .gguf in the repo) or a :QUANT tag"
                )
            if ".." in Path(values["file"]).parts or values["file"].startswith("/"):
                raise self.error(fields["file"][1], f"{key}.file", "must be a relative path inside the repo")
        if "sha256" in values:
            digest = hex_of(values["sha256"], bare=True)
            if digest is None:
                raise self.error(fields["sha256"][1], f"{key}.sha256", "expected 64 hex digits")
            values["sha256"] = digest
        return Source(**values)  # type: ignore[arg-type]

    def member(self, pair, role: str) -> MemberSpec:
        key = f"members.{role}"
        node = pair[1]
        if isinstance(node, yaml.ScalarNode):  # shorthand: `large: models/x.gguf`
            fields = {"path": pair}
            return MemberSpec(role=role, source=self.source(fields, key, node))
        fields = self.mapping(pair, key, MEMBER_KEYS)
        extra: dict[str, Any] = {}
        for name in ("gpu_layers", "n_ctx", "threads"):
            if name in fields:
                extra[name] = self.integer(fields[name], f"{key}.{name}")
        if "adapter_scale" in fields:
            extra["adapter_scale"] = self.number(fields["adapter_scale"], f"{key}.adapter_scale")
        if "rpc" in fields:
            extra["rpc"] = self.servers(fields["rpc"], f"{key}.rpc")
            extra.setdefault("gpu_layers", -1)  # naming servers means offloading every layer unless told
        if "tensor_split" in fields:
            extra["tensor_split"] = self.split(fields["tensor_split"], f"{key}.tensor_split")
        adapter = None
        if "adapter" in fields:
            anode = fields["adapter"][1]
            if isinstance(anode, yaml.ScalarNode):
                adapter = self.source({"path": fields["adapter"]}, f"{key}.adapter", anode)
            else:
                afields = self.mapping(fields["adapter"], f"{key}.adapter", SOURCE_KEYS)
                adapter = self.source(afields, f"{key}.adapter", anode)
        source_fields = {k: v for k, v in fields.items() if k in SOURCE_KEYS}
        source = None
        if source_fields or adapter is None:
            source = self.source(source_fields, key, node)
        if adapter is not None and source is not None:
            raise self.error(
                node, f"{key}.adapter", "an adapter member takes the base's weights; drop path/hf"
            )
        if adapter is not None and ("rpc" in fields or "tensor_split" in fields):
            name = "rpc" if "rpc" in fields else "tensor_split"
            raise self.error(fields[name][0], f"{key}.{name}", "an adapter member runs where the base runs")
        return MemberSpec(role=role, source=source, adapter=adapter, **extra)

    def servers(self, pair, key: str) -> tuple[str, ...]:
        """`rpc:` as a list of host:port, or one string (comma-separated, as llama.cpp's --rpc)."""
        node = pair[1]
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[str] = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(node, yaml.SequenceNode) else key
            value = self.string((None, item), where)
            for part in (p for p in value.split(",") if p.strip()):
                try:
                    endpoint = str(parse_endpoint(part))
                except ValueError as exc:
                    raise self.error(item, where, str(exc)) from None
                if endpoint in out:
                    raise self.error(item, where, f"{endpoint} is listed twice")
                out.append(endpoint)
        if not out:
            raise self.error(node, key, "expected a list of host:port")
        return tuple(out)

    def split(self, pair, key: str) -> tuple[float, ...]:
        node = pair[1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.error(node, key, "expected a list of numbers, one per device (RPC servers first)")
        out = tuple(self.number((None, item), f"{key}[{i}]") for i, item in enumerate(node.value))
        for i, (item, value) in enumerate(zip(node.value, out, strict=True)):
            if value < 0 or value != value or value == float("inf"):
                raise self.error(item, f"{key}[{i}]", "expected a finite number >= 0")
        if not sum(out) > 0:
            raise self.error(node, key, "at least one share must be positive")
        return out

    def parameters(self, pair) -> dict[str, Any]:
        fields = self.mapping(pair, "parameters", PARAM_KEYS + tuple(sorted(IGNORED_KEYS)))
        out = {}
        for name, (_knode, vnode) in fields.items():
            if name in IGNORED_KEYS:
                continue
            value = _construct(vnode)
            try:
                out[name] = check_value(name, value)
            except InvalidRequest as exc:
                raise self.error(vnode, f"parameters.{name}", str(exc).split('" ', 1)[-1]) from None
        return out

    def decoding(self, top: dict, key: str, parse) -> Any:
        """`steer:` / `speculative:`: a name or a mapping, checked by the engine's one parser."""
        if key not in top:
            return None
        try:
            return parse(_construct(top[key][1]), key)
        except InvalidRequest as exc:
            raise self.error(top[key][1], key, str(exc)) from None

    def messages(self, pair) -> tuple[dict[str, str], ...]:
        node = pair[1]
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "messages", "expected a list of {role, content}")
        out = []
        for i, item in enumerate(node.value):
            fields = self.mapping(item, f"messages[{i}]", ("role", "content"))
            out.append({k: self.string(v, f"messages[{i}].{k}") for k, v in fields.items()})
        return tuple(out)


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
