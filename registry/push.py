"""Push: publish a stored model to a Hub repo as a shareable recipe plus a model card.

Members that came from the Hub are referenced by repo, commit and sha256, never
uploaded again; so are local members the Hub already holds (an earlier push from
this store put them there, or the destination has that file with that sha256):
pushing one more member of an adapter family uploads its adapter and its recipe
only. Other local members (files, Ollama blobs, adapters) are uploaded next to the
recipe, which names them by relative path with their sha256; `pull hf.co/...` reads
such paths as files of the same repo at the pulled commit. The recipe is
`nanocommander.yaml` for the `latest` tag, else `<tag>.yaml`, so one repo can hold
several recipes (the model card is written for `latest`, or when the repo has none).
Uploads use HfApi.create_repo and create_commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from huggingface_hub import CommitOperationAdd

from nanocommander.engine.request.recipe import ROLES, Recipe, Source
from nanocommander.errors import RegistryError
from nanocommander.registry import hub
from nanocommander.registry.hub import hub_error
from nanocommander.registry.name import Name
from nanocommander.registry.store import (
    ADAPTER_TYPE,
    MODEL_TYPE,
    RECIPE_TYPE,
    Layer,
    Manifest,
    atomic_write,
    parse_digest,
)

if TYPE_CHECKING:
    from nanocommander.registry.api import Registry


def recipe_filename(dest: Name) -> str:
    return "nanocommander.yaml" if dest.tag.lower() == "latest" else f"{dest.tag}.yaml"


def push(registry: Registry, source: Name, dest: Name, emit, *, private: bool = False) -> None:
    """Upload `source` to `dest` (hf.co/user/repo[:tag]), emitting Ollama-style push events.

    Long on purpose: the Ollama-style event sequence of one upload, step by step, in the order a client sees
    it.
    """

    emit({"status": "retrieving manifest"})
    canonical, manifest = registry.store.read_manifest(source)
    stored = registry._stored(canonical, manifest)
    settings = registry.settings
    settings.require_online("a push")
    uploads: dict[str, tuple[str, Path, int]] = {}  # digest -> (file name in repo, blob, size)

    homes: dict[str, Source | None] = {}

    def publish(src: Source | None, layer: Layer | None, role: str, kind: str) -> Source | None:
        if src is None or layer is None:
            return src
        if src.kind == "hf":
            return src  # already on the Hub: referenced, not uploaded
        stem = Path(src.path).name if src.path else f"{role}{'-adapter' if kind == 'adapter' else ''}.gguf"
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
        if not stem.lower().endswith(".gguf"):
            stem += ".gguf"
        if layer.digest not in homes:  # e.g. the large and base of an adapter family pushed before
            emit({"status": f"looking for {layer.digest[7:19]} on the Hub"})
            homes[layer.digest] = hub_home(registry, layer.digest, dest, stem)
        if homes[layer.digest] is not None:
            return homes[layer.digest]
        if layer.digest not in uploads:
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
    ops.append(CommitOperationAdd(path_in_repo=recipe_filename(dest), path_or_fileobj=recipe_text.encode()))
    for digest, (_, _, size) in uploads.items():
        emit({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": 0})
    api = settings.api()
    try:
        api.create_repo(dest.repo_id, private=private, exist_ok=True)
        if dest.tag.lower() == "latest" or not api.file_exists(dest.repo_id, "README.md"):
            ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        info = api.create_commit(
            dest.repo_id,
            operations=ops,
            commit_message=f"nanocommander push {canonical.display()} as {dest.display()}",
        )
    except Exception as exc:  # noqa: BLE001 - every client error becomes one RegistryError
        raise hub_error(exc, f"pushing to {dest.display()}") from exc
    for digest, (fname, _, _) in uploads.items():
        remember_home(registry, digest, dest.repo_id, fname, getattr(info, "oid", None))
    for digest, (_, _, size) in uploads.items():
        emit({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": size})
    emit({"status": "pushing manifest"})
    emit({"status": "success"})


def hub_home(registry: Registry, digest: str, dest: Name, fname: str) -> Source | None:
    """Where the Hub already holds this blob, so a push references it instead of uploading it again.

    Candidates, each confirmed by a HEAD (its sha256 must match): where an earlier push from this
    store put it, an hf source of any stored recipe pinned to it, and a file of that name in `dest`.
    """
    hexdigest = parse_digest(digest)
    candidates: list[tuple[str, str, str | None]] = []
    memo = registry.store.root / "pushed" / hexdigest
    with contextlib.suppress(OSError, ValueError):
        candidates += [(x["hf"], x["file"], x.get("revision")) for x in json.loads(memo.read_text())]
    for _, path in registry.store.list():
        with contextlib.suppress(Exception):  # an unreadable model never blocks a push
            manifest = Manifest.from_json(path.read_bytes())
            recipe = registry.store.read_blob(manifest.layer(RECIPE_TYPE).digest)  # type: ignore[union-attr]
            for spec in (yaml.safe_load(recipe).get("members") or {}).values():
                for src in (spec, spec.get("adapter")) if isinstance(spec, dict) else ():
                    if isinstance(src, dict) and src.get("hf") and src.get("sha256") == hexdigest:
                        candidates.append((src["hf"], src["file"], src.get("revision")))
    candidates.append((dest.repo_id, fname, None))
    for repo, file, revision in dict.fromkeys(candidates):
        try:
            remote = hub.remote_file(registry.settings, repo, file, revision)
        except RegistryError:
            continue
        if remote.sha256 == hexdigest:
            return Source(hf=repo, file=file, revision=remote.commit, sha256=hexdigest)
    return None


def remember_home(registry: Registry, digest: str, repo: str, file: str, revision: str | None) -> None:
    """Note where a push put a blob (`pushed/<sha256>`), for `hub_home` on later pushes."""
    memo = registry.store.root / "pushed" / parse_digest(digest)
    entries = []
    with contextlib.suppress(OSError, ValueError):
        entries = json.loads(memo.read_text())
    entry = {"hf": repo, "file": file, "revision": revision}
    with contextlib.suppress(RegistryError):  # only a hint: a push that worked does not fail here
        atomic_write(memo, json.dumps([entry, *[e for e in entries if e != entry]][:8]).encode())


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
