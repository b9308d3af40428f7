"""Push: publish a stored model to a Hub repo as a shareable recipe plus a model card.

Members that came from the Hub are referenced by repo, commit and sha256, never
uploaded again. Local members (files, Ollama blobs, adapters) are uploaded next to
the recipe, which names them by relative path with their sha256; `pull hf.co/...`
reads such paths as files of the same repo at the pulled commit. The recipe is
`nanocommander.yaml` for the `latest` tag, else `<tag>.yaml`, so one repo can hold
several recipes. Uploads use HfApi.create_repo and create_commit.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from nanocommander.registry.hub import hub_error
from nanocommander.registry.name import Name
from nanocommander.registry.store import ADAPTER_TYPE, MODEL_TYPE, Layer, parse_digest

from nanocommander.recipe import ROLES, Recipe, Source

if TYPE_CHECKING:
    from nanocommander.registry.api import Registry


def recipe_filename(dest: Name) -> str:
    return "nanocommander.yaml" if dest.tag.lower() == "latest" else f"{dest.tag}.yaml"


def push(registry: Registry, source: Name, dest: Name, emit, *, private: bool = False) -> None:
    """Upload `source` to `dest` (hf.co/user/repo[:tag]), emitting Ollama-style push events."""
    from huggingface_hub import CommitOperationAdd

    emit({"status": "retrieving manifest"})
    canonical, manifest = registry.store.read_manifest(source)
    stored = registry._stored(canonical, manifest)
    settings = registry.settings
    settings.require_online("a push")
    uploads: dict[str, tuple[str, Path, int]] = {}  # digest -> (file name in repo, blob, size)

    def publish(src: Source | None, layer: Layer | None, role: str, kind: str) -> Source | None:
        if src is None or layer is None:
            return src
        if src.kind == "hf":
            return src  # already on the Hub: referenced, not uploaded
        if layer.digest not in uploads:
            stem = (
                Path(src.path).name if src.path else f"{role}{'-adapter' if kind == 'adapter' else ''}.gguf"
            )
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
            if not stem.lower().endswith(".gguf"):
                stem += ".gguf"
            taken = {u[0] for u in uploads.values()}
            fname = stem if stem not in taken else f"{role}-{stem}"
            uploads[layer.digest] = (fname, registry.store.blob_path(layer.digest), layer.size)
        return Source(path=Path(uploads[layer.digest][0]), sha256=parse_digest(layer.digest))

    shared = stored
    for role in ROLES:
        spec = stored.member(role)
        shared = shared.replace_member(
            role,
            dataclasses.replace(
                spec,
                source=publish(spec.source, manifest.layer(MODEL_TYPE, role), role, "model"),
                adapter=publish(spec.adapter, manifest.layer(ADAPTER_TYPE, role), role, "adapter"),
                rpc=(),  # this machine's RPC servers are private placement, not part of the shared recipe
                tensor_split=(),
            ),
        )
    recipe_text = shared.dump()
    card = model_card(shared, dest)
    ops = [
        CommitOperationAdd(path_in_repo=fname, path_or_fileobj=str(blob))
        for fname, blob, _ in uploads.values()
    ]
    ops += [
        CommitOperationAdd(path_in_repo=recipe_filename(dest), path_or_fileobj=recipe_text.encode()),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()),
    ]
    for digest, (_, _, size) in uploads.items():
        emit({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": 0})
    api = settings.api()
    try:
        api.create_repo(dest.repo_id, private=private, exist_ok=True)
        api.create_commit(
            dest.repo_id,
            operations=ops,
            commit_message=f"nanocommander push {canonical.display()} as {dest.display()}",
        )
    except Exception as exc:  # noqa: BLE001 - every client error becomes one RegistryError
        raise hub_error(exc, f"pushing to {dest.display()}") from exc
    for digest, (_, _, size) in uploads.items():
        emit({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": size})
    emit({"status": "pushing manifest"})
    emit({"status": "success"})


def model_card(recipe: Recipe, dest: Name) -> str:
    """README.md with YAML front matter: the `nanocommander` tag and the Hub members as base_model."""
    bases = []
    for spec in recipe.members:
        if spec.source is not None and spec.source.kind == "hf" and spec.source.hf not in bases:
            bases.append(spec.source.hf)
    meta: dict = {"tags": ["nanocommander", "gguf", "proxy-tuning"]}
    if bases:
        meta["base_model"] = bases
    if recipe.license and re.fullmatch(r"[a-z0-9.-]{2,40}", recipe.license.strip()):
        meta["license"] = recipe.license.strip()
    rows = []
    for spec in recipe.members:
        for kind, src in (("model", spec.source), ("adapter", spec.adapter)):
            if src is None:
                continue
            where = (
                f"[{src.hf}](https://huggingface.co/{src.hf}) `{src.file}`"
                if src.kind == "hf"
                else f"`{src.path}` (in this repo)"
                if src.kind == "path"
                else f"ollama `{src.ollama}`"
            )
            rows.append(f"| {spec.role} | {kind} | {where} |")
    pull_name = dest.display().removesuffix(":latest")
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    return (
        f"---\n{front}\n---\n\n# {recipe.name}\n\n"
        f"{recipe.description or 'A composite model for NanoCommander.'}\n\n"
        "NanoCommander runs three GGUF models token by token and samples from "
        f"`large + alpha * (tuned - base)` (proxy-tuning), here with alpha = {recipe.alpha:g}.\n\n"
        "| role | kind | source |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f'## Use\n\n```sh\nnanocommander pull {pull_name}\nnanocommander run {pull_name} "Hello"\n```\n'
    )
