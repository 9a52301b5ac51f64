"""What the wheel holds: every package of the source tree, the event contract as `services.contract`, and the page."""
from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from services.common.events import SCHEMA_PACKAGE, schema_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setuptools_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


PAGE_PACKAGE = "services.api.page"  # the page's static files: a package of data, without code


def _source_packages() -> set[str]:
    return {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "services").rglob("__init__.py")}


def test_every_source_package_is_listed(setuptools_config: dict[str, Any]) -> None:
    # The list is explicit (discovery cannot map schemas/), so a new package must not be left out of the wheel.
    assert set(setuptools_config["packages"]) == _source_packages() | {SCHEMA_PACKAGE, PAGE_PACKAGE}


def test_the_contract_package_is_the_schemas_folder_with_its_json(setuptools_config: dict[str, Any]) -> None:
    assert setuptools_config["package-dir"] == {SCHEMA_PACKAGE: "schemas"}
    assert setuptools_config["package-data"][SCHEMA_PACKAGE] == ["*.json"]
    assert [f.name for f in schema_files()] == sorted(p.name for p in (ROOT / "schemas").glob("*.json"))


def test_every_file_of_the_page_is_package_data(setuptools_config: dict[str, Any]) -> None:
    patterns = setuptools_config["package-data"][PAGE_PACKAGE]
    page = ROOT / "services" / "api" / "page"
    files = [path.name for path in page.iterdir()]
    assert files and all(any(fnmatch(name, pattern) for pattern in patterns) for name in files)
