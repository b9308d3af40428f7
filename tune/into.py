"""Put a freshly trained adapter into a composite recipe (`tune --into NAME --large LARGE`).

The recipe is written next to the adapter with the adapter as the tuned member
over the base it was trained on, then read back with `Recipe.load` so a bad
recipe fails here rather than at serve time. With `--recipe EXISTING.yaml` the
existing recipe is kept and only its base and tuned members change. With
`--from FAMILY` (a stored composite) the adapter is trained on FAMILY's base and
registered in the store as one more member of its adapter family.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from nanocommander.engine.request.decode_options import RECOMMENDED, Steer
from nanocommander.engine.request.recipe import RECIPE_NAME, MemberSpec, Recipe, Source
from nanocommander.registry import Registry
from nanocommander.registry.family import member_recipe
from nanocommander.tune.errors import TrainingError


def build_recipe(
    *,
    adapter: Path,
    base: Path,
    name: str | None = None,
    large: Path | None = None,
    existing: Path | None = None,
    alpha: float | None = None,
) -> Recipe:
    """A Recipe whose tuned member is `{adapter: ...}` over `base`; from scratch or from `existing`."""
    base_spec = MemberSpec(role="base", source=Source(path=base.resolve()))
    tuned_spec = MemberSpec(role="tuned", adapter=Source(path=adapter.resolve()))
    if existing is not None:
        recipe = Recipe.load(existing)
        recipe = recipe.replace_member("base", dataclasses.replace(recipe.base, source=base_spec.source))
        recipe = recipe.replace_member("tuned", tuned_spec)
        changes: dict = {"path": None}
        if name:
            changes["name"] = name
        if alpha is not None:
            changes["alpha"] = alpha
        return dataclasses.replace(recipe, **changes)
    if not name or large is None:
        raise TrainingError("--into NAME needs --large LARGE.gguf (or --recipe EXISTING.yaml)")
    if not RECIPE_NAME.match(name):
        raise TrainingError(f"--into '{name}': use letters, digits, '_', '-', '.' (at most 80)")
    if not large.is_file():
        raise TrainingError(f"--large: file not found: {large}")
    return Recipe(
        name=name,
        large=MemberSpec(role="large", source=Source(path=large.resolve())),
        base=base_spec,
        tuned=tuned_spec,
        alpha=1.0 if alpha is None else alpha,
        steer=RECOMMENDED,  # README, "Choosing a steering setting": style kept, facts the large model's
    )


def write_recipe(recipe: Recipe, folder: Path) -> Path:
    """Write `<name>.yaml` into `folder` with paths relative to it, and check it loads."""
    path = folder / f"{recipe.name}.yaml"
    data = recipe.to_dict()
    for member in data["members"].values():  # relative paths keep the folder movable
        if "path" in member:
            member["path"] = _relative(Path(member["path"]), folder)
        if isinstance(member.get("adapter"), str):
            member["adapter"] = _relative(Path(member["adapter"]), folder)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    Recipe.load(path)  # raises RecipeError naming the line if anything is off
    return path


def register(recipe_path: Path, name: str) -> str:
    """How to add a standalone recipe to the store (tune writes files; the user decides to register)."""
    return f"to add it to the store run: nanocommander create {name} -f {recipe_path}"


def family_base(family: str) -> Path:
    """The base GGUF (a store blob) of the stored composite `family`, to train a new member on.

    Raises ModelNotFound, or RegistryError when a blob of it is missing.
    """

    return Path(Registry().resolve(family).base.source.path)  # type: ignore[union-attr,arg-type]


def family_recipe(name: str, family: str, adapter: Path, alpha: float | None = None) -> Recipe:
    """`family`'s recipe over its store blobs with `adapter` as the tuned member (for `eval`)."""

    if not RECIPE_NAME.match(name):
        raise TrainingError(f"--into '{name}': use letters, digits, '_', '-', '.' (at most 80)")
    return member_recipe(Registry().resolve(family), name, Source(path=adapter.resolve()), alpha=alpha)


def register_member(
    name: str, family: str, adapter: Path, alpha: float | None = None, *, steer: Steer | None = None
) -> str:
    """Register `name` in the store as a member of `family`'s adapter family (its large and base
    blobs); `steer` (calibrate's choice) replaces the family's."""

    for _event in Registry().create_member(name, family, adapter, alpha=alpha, steer=steer):
        pass
    return f"registered as {name}, sharing large and base with {family}"


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path, folder.resolve())
    except ValueError:  # another drive on Windows
        return str(path)
