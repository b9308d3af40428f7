"""Adapter families: composites that share one large and one base model and differ by a LoRA on base.

Tuning is cheap, so users make many tuned members: one per character, customer or style.
`create NAME --from FAMILY --adapter FILE` registers one more composite over the large and
base of FAMILY (a stored model or a recipe file): their stored sources are pinned to a
sha256 the store already holds, so nothing is copied or hashed again and only the adapter
is new. `list` marks members of one family with the same FAMILY id; `rm` of one member
keeps the blobs the others use (the store's garbage collection counts every manifest).

Before anything is written an adapter is checked against its base with llama.cpp's own
rules for a LoRA, read from the two GGUF headers: `general.type` adapter and `adapter.type`
lora, the base's architecture, and every `X.lora_a`/`X.lora_b` pair over a base tensor `X`
of matching shape (ggml order: a weight is (in, out), lora_a (in, r), lora_b (r, out);
token_embd's pair is stored the other way round).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from nanocommander.engine.request.recipe import RECIPE_NAME, MemberSpec, Recipe, Source
from nanocommander.errors import AdapterMismatch
from nanocommander.gguf_file import read_gguf, tensor_shapes
from nanocommander.registry.store import ADAPTER_TYPE, MODEL_TYPE, Manifest, Store

LORA_SUFFIXES = (".lora_a", ".lora_b")


def check_adapter(
    base: Path, adapter: Path, *, base_label: str | None = None, adapter_label: str | None = None
) -> None:
    """Refuse an adapter that llama.cpp would not load onto `base`, saying why.

    Raises:
        AdapterMismatch: not a LoRA GGUF, another architecture, or tensors the base lacks or
            whose shapes differ; the message names the first offending tensor and both shapes.
    """
    a_name, b_name = adapter_label or str(adapter), base_label or str(base)
    try:
        a_info, b_info = read_gguf(adapter), read_gguf(base)
    except ValueError as exc:
        raise AdapterMismatch(str(exc)) from None
    if a_info.kind != "adapter":
        raise AdapterMismatch(
            f"{a_name} is a full model GGUF, not a LoRA adapter (general.type is not 'adapter'); "
            "use it as a tuned member with path: instead"
        )
    if a_info.adapter_type not in ("lora", "alora"):
        raise AdapterMismatch(
            f"{a_name} is a '{a_info.adapter_type}' adapter; only LoRA adapters can be applied"
        )
    if b_info.kind == "adapter":
        raise AdapterMismatch(f"the base {b_name} is itself an adapter, not a model")
    if a_info.architecture != b_info.architecture:
        raise AdapterMismatch(
            f"adapter {a_name} is for architecture '{a_info.architecture}' but the base {b_name} is "
            f"'{b_info.architecture}'; train the adapter on this base"
        )
    problem = _shape_problem(tensor_shapes(base), tensor_shapes(adapter))
    if problem:
        raise AdapterMismatch(
            f"adapter {a_name} does not fit the base {b_name}: {problem}; it was trained on another model"
        )


def _shape_problem(base: dict[str, tuple[int, ...]], lora: dict[str, tuple[int, ...]]) -> str | None:
    """The first reason llama.cpp's adapter loader would refuse these tensors, or None."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in lora.items():
        if not name.endswith(LORA_SUFFIXES):
            continue  # llama.cpp ignores other tensors
        pairs.setdefault(name[: -len(".lora_a")], {})[name[-1]] = shape
    if not pairs:
        return "it holds no lora_a/lora_b tensors"
    bad = []
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            bad.append(f"{target} has lora_{'a' if 'a' in ab else 'b'} without its pair")
            continue
        w = base.get(target)
        if w is None:
            bad.append(f"it adapts {target}, which the base does not have")
            continue
        a, b = ab["a"], ab["b"]
        if len(w) < 2 or len(a) < 2 or len(b) < 2:
            bad.append(f"{target} is not a matrix")
        elif target.startswith("token_embd."):
            if w[0] != b[1] or w[1] != a[1]:
                bad.append(_shape_text(target, w, a, b))
        elif w[0] != a[0] or w[1] != b[1] or a[1] != b[0]:
            bad.append(_shape_text(target, w, a, b))
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return bad[0] + more


def _shape_text(target: str, w: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...]) -> str:
    dims = "x".join
    return (
        f"{target} is {dims(map(str, w[:2]))} in the base but lora_a is {dims(map(str, a[:2]))} "
        f"and lora_b {dims(map(str, b[:2]))}"
    )


def check_recipe_adapter(store: Store, recipe: Recipe, *, base_label: str | None = None) -> bool:
    """Check a recipe's tuned adapter against its base when both are on this machine already (a local
    path, or a pinned sha256 the store holds); False when one is still to be fetched.

    Raises:
        AdapterMismatch: see `check_adapter`.
    """
    if not recipe.tuned.is_adapter:
        return True
    base, adapter = _local_file(store, recipe.base.source), _local_file(store, recipe.tuned.adapter)
    if base is None or adapter is None:
        return False
    check_adapter(
        base,
        adapter,
        base_label=base_label or _label(recipe.base.source),  # type: ignore[arg-type]
        adapter_label=_label(recipe.tuned.adapter),  # type: ignore[arg-type]
    )
    return True


def _label(src: Source) -> str:
    if src.kind == "hf":
        return f"hf.co/{src.hf}/{src.file}"
    return str(src.path) if src.kind == "path" else f"ollama:{src.ollama}"


def _local_file(store: Store, src: Source | None) -> Path | None:
    if src is None:
        return None
    if src.sha256 and store.has_blob(f"sha256:{src.sha256}"):
        return store.blob_path(f"sha256:{src.sha256}")
    if src.kind == "path" and src.path is not None and Path(src.path).is_file():
        return Path(src.path)
    return None


def member_recipe(
    family: Recipe,
    name: str,
    adapter: Source,
    *,
    alpha: float | None = None,
    adapter_scale: float | None = None,
) -> Recipe:
    """`family`'s recipe (large, base, alpha, template, parameters...) with `adapter` as its tuned member."""
    short = name.rsplit("/", 1)[-1].split(":", 1)[0][:80]
    scale = family.tuned.adapter_scale if adapter_scale is None else adapter_scale
    if family.tuned.is_adapter:  # keep its context and thread settings
        tuned = dataclasses.replace(family.tuned, adapter=adapter, adapter_scale=scale)
    else:  # a full tuned model had its own load settings; an adapter rides on base's weights
        tuned = MemberSpec(role="tuned", adapter=adapter, adapter_scale=scale, n_ctx=family.tuned.n_ctx)
    return dataclasses.replace(
        family,
        name=short if RECIPE_NAME.match(short) else "member",
        tuned=tuned,
        alpha=family.alpha if alpha is None else alpha,
        path=None,
    )


def family_id(manifest: Manifest) -> str | None:
    """12 hex digits naming the (large, base) pair of a composite whose tuned member is an adapter."""
    large, base = manifest.layer(MODEL_TYPE, "large"), manifest.layer(MODEL_TYPE, "base")
    if large is None or base is None or manifest.layer(ADAPTER_TYPE, "tuned") is None:
        return None
    return hashlib.sha256(f"{large.digest}\n{base.digest}".encode()).hexdigest()[:12]
