"""Every top-level module of the package sits in a layer of the import contract, so the contract can catch an
import that points the wrong way from any of them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nurture

PACKAGE = Path(nurture.__file__).resolve().parent
PYPROJECT = PACKAGE.parents[1] / "pyproject.toml"


def _layered_modules() -> set[str]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return {name for layer in layers for name in re.split(r"\s*[:|]\s*", layer.strip())}


def _top_level_modules() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return {f"nurture.{name}" for name in names}


def test_every_top_level_module_is_in_a_layer_of_the_import_contract() -> None:
    missing = sorted(_top_level_modules() - _layered_modules())
    assert missing == []


def test_the_layers_name_no_module_that_does_not_exist() -> None:
    assert sorted(_layered_modules() - _top_level_modules()) == []
