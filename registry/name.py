"""Model names: the one place that splits, validates and normalises them.

Grammar (after Ollama's types/model/name.go)::

    name      = [host "/"] [namespace "/"] model [":" tag]
    host      = part with "." ":" allowed, 1-350 chars   (default: "local")
    namespace = part without ".", 1-80 chars           (default: "library")
    model     = part with ".", 1-96 chars (Hub repo names reach 96)
    tag       = part with ".", 1-128 chars              (default: "latest")
    part      = first char [A-Za-z0-9_], then [A-Za-z0-9_.-]

So `tiny`, `me/tiny:v2` and `hf.co/user/repo:Q4_K_M` are names, while `../x`, `/etc`,
`a//b` and `x:` are not: every part starts with a letter, digit or underscore, which
rules out `.`/`..` and empty parts, so a valid name is always a safe relative path.
`huggingface.co` is read as `hf.co`, and an `http(s)://` scheme is dropped.
Names compare case-insensitively (`key()`, `==`, `hash`), as Ollama looks them up;
the store keeps the casing a model was first written with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from nanocommander.errors import InvalidName

DEFAULT_HOST = "local"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HF_HOST = "hf.co"
MAX_LEN = 600  # bounds the whole string before any parsing work

_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$")
_MODEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_ALIASES = {"huggingface.co": HF_HOST, "www.huggingface.co": HF_HOST}
_LIMITS = {"host": 350, "namespace": 80, "model": 96, "tag": 128}


@dataclass(frozen=True, eq=False)
class Name:
    """A fully qualified model name; build one with `Name.parse`."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Name:
        """Parse and validate `text`, filling in the default host, namespace and tag.

        Raises:
            InvalidName: the text breaks the grammar above; nothing is touched on disk.
        """
        if not isinstance(text, str):
            raise InvalidName(f"invalid model name {text!r}: expected a string")
        shown = text if len(text) <= 80 else text[:77] + "..."
        if not text.strip():
            raise InvalidName("invalid model name: the name is empty")
        if len(text) > MAX_LEN:
            raise InvalidName(f"invalid model name '{shown}': longer than {MAX_LEN} characters")
        body = text.strip()
        for scheme in ("https://", "http://"):
            if body.lower().startswith(scheme):
                body = body[len(scheme) :]
        tag = DEFAULT_TAG
        last = body.rsplit("/", 1)[-1]
        if ":" in last:  # a ':' before the last '/' belongs to host:port
            model_part, tag = last.split(":", 1)
            body = body[: len(body) - len(last)] + model_part
        parts = body.split("/")
        if len(parts) > 3:
            raise InvalidName(f"invalid model name '{shown}': use [host/][namespace/]model[:tag]")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        host = _HOST_ALIASES.get(host.lower(), host)
        for what, value, pattern in (
            ("host", host, _HOST),
            ("namespace", namespace, _NAMESPACE),
            ("model", model, _MODEL),
            ("tag", tag, _TAG),
        ):
            if not pattern.match(value):
                raise InvalidName(_explain(shown, what, value))
        return cls(host, namespace, model, tag)

    @property
    def is_hub(self) -> bool:
        """True for `hf.co/user/repo[:tag]` names, which `pull` fetches from the Hugging Face Hub."""
        return self.host.lower() == HF_HOST

    @property
    def repo_id(self) -> str:
        """The Hub repo id (`user/repo`) of an `hf.co/...` name."""
        return f"{self.namespace}/{self.model}"

    def key(self) -> tuple[str, str, str, str]:
        """The case-insensitive identity used for lookups and equality."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Name) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def path(self) -> PurePosixPath:
        """The manifest's path relative to `manifests/`: host/namespace/model/tag."""
        return PurePosixPath(*self.parts())

    def display(self) -> str:
        """The shortest form that parses back to this name: `tiny:latest`, `me/tiny:v2`, `hf.co/u/r:Q4`."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.display()


def canonical(text: str) -> str:
    """The lookup key of a model name: its shortest form, lower-cased (`Tiny` -> `tiny:latest`,
    `library/tiny` -> `tiny:latest`), as Ollama resolves names.

    Raises:
        InvalidName: the text is not a name (see the grammar above).
    """
    return Name.parse(text).display().lower()


def _explain(shown: str, what: str, value: str) -> str:
    if not value:
        return f"invalid model name '{shown}': the {what} is empty"
    if len(value) > _LIMITS[what]:
        return f"invalid model name '{shown}': the {what} is longer than {_LIMITS[what]} characters"
    allowed = (
        "letters, digits, '_', '-'"
        + ("" if what == "namespace" else ", '.'")
        + (", ':'" if what == "host" else "")
    )
    return (
        f"invalid model name '{shown}': the {what} '{value[:40]}' must start with a letter, digit or '_' "
        f"and use only {allowed}"
    )
