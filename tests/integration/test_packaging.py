"""A non-editable wheel works on its own: built offline, installed into a fresh venv, run outside the repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "services", "schemas")  # what the wheel is built from, as in deploy/Dockerfile
OWN_DISTRIBUTIONS = ("thumbs", "thumbs-devtools")
TIMEOUT = 180.0  # seconds per step; each takes a few here, and none may hang the suite

# Runs inside the installed venv: every schema example through the installed codec, and where both came from.
DECODE_EXAMPLES = textwrap.dedent("""\
    import json
    from importlib.resources import files

    from services.common import events

    decoded = 0
    for name, example in events.schema_examples():
        if name == "thumbnail.dlq.v1.json":
            continue  # a dead letter is a record about an event, not an event
        raw = json.dumps(example).encode()
        if example["type"] == "thumbnail.fetched" and example["version"] >= 2:
            event = events.decode(b"\\0" * example["payload"]["image_size"], [(events.EVENT_HEADER, raw)])
        else:
            event = events.decode(raw)
        record = events.encode(event)
        assert events.decode(record.value, record.headers) == event, name
        decoded += 1
    print(json.dumps({
        "contract": str(files(events.SCHEMA_PACKAGE)),
        "codec": events.__file__,
        "schemas": [f.name for f in events.schema_files()],
        "decoded": decoded,
    }))
""")

# Runs inside the installed venv: the page and its assets, from the installed package (no lifespan: nothing connects).
SERVE_PAGE = textwrap.dedent("""\
    import json

    from starlette.testclient import TestClient

    from services.api.app import PAGE, create_app
    from services.common.settings import Settings

    client = TestClient(create_app(Settings()))
    paths = ("/", "/page/page.css", "/page/page.js")
    print(json.dumps({"page": str(PAGE), "statuses": [client.get(path).status_code for path in paths]}))
""")


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    cwd: Path  # outside the repository: nothing may be found relative to the source tree
    env: dict[str, str]

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return _run(argv, cwd=self.cwd, env=self.env)


def _run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _copy_sources(target: Path) -> Path:
    # A copy, so the build's own files (build/, *.egg-info) never land in the work tree.
    target.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


def _build_wheel(sources: Path, wheels: Path) -> Path:
    # No build isolation and no index: the venv's setuptools builds it, and nothing is downloaded.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
          str(sources)])
    (wheel,) = wheels.glob("thumbs-*.whl")
    return wheel


def _own_entries() -> set[str]:
    """Top-level site-packages entries of this project's distributions (the editable install's finder and metadata)."""
    entries: set[str] = set()
    for name in OWN_DISTRIBUTIONS:
        try:
            files = distribution(name).files or []
        except PackageNotFoundError:
            continue
        entries |= {Path(str(f)).parts[0] for f in files} - {"__pycache__"}  # that folder is shared with others
    return entries


def _dependency_view(target: Path) -> Path:
    """The test venv's site-packages without this project: symlinks to every other entry.

    The fresh venv must not download its dependencies, so it borrows these. The whole folder would also lend it
    the editable install's metadata, and with it the devtools' entry points, which a production install lacks.
    """
    target.mkdir()
    own = _own_entries()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if entry.name not in own:
            (target / entry.name).symlink_to(entry)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    wheel = _build_wheel(_copy_sources(base / "src"), base / "wheels")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps", str(wheel)])
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # A .pth line is a folder appended to sys.path: the dependencies become importable without being installed.
    (site_packages / "thumbs-test-dependencies.pth").write_text(f"{_dependency_view(base / 'dependencies')}\n")
    cwd = base / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THUMBS_", "PYTHON"))}
    return Installed(venv, site_packages, cwd, env)


def test_version_comes_from_the_installed_metadata(installed: Installed) -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed.run([str(installed.venv / "bin" / "thumbs"), "--version"]).stdout == f"thumbs {expected}\n"


def test_settings_default_to_the_working_directory(installed: Installed) -> None:
    out = installed.run([str(installed.venv / "bin" / "thumbs"), "settings"]).stdout
    assert f"THUMBS_STATE_DIR={installed.cwd.resolve() / '.thumbs'}\n" in out
    assert "THUMBS_KAFKA_BOOTSTRAP=127.0.0.1:9092\n" in out


def test_every_schema_example_decodes_with_the_schemas_in_the_wheel(installed: Installed) -> None:
    report = json.loads(installed.run([str(installed.venv / "bin" / "python"), "-c", DECODE_EXAMPLES]).stdout)
    assert Path(report["contract"]) == installed.site_packages / "services" / "contract"
    assert Path(report["codec"]).is_relative_to(installed.site_packages)
    assert report["schemas"] == sorted(p.name for p in (ROOT / "schemas").glob("*.json"))
    events = [p for p in (ROOT / "schemas").glob("*.json") if p.name != "thumbnail.dlq.v1.json"]
    assert report["decoded"] == sum(len(json.loads(p.read_text()).get("examples", [])) for p in events) > 0


def test_the_local_tooling_is_not_part_of_the_service(installed: Installed) -> None:
    usage = installed.run([str(installed.venv / "bin" / "thumbs"), "--help"]).stdout
    offered = re.search(r"\{([\w,-]+)\}", usage)
    assert offered is not None, usage
    commands = set(offered.group(1).split(","))
    assert {"api", "fetcher", "settings", "replay"} <= commands and not commands & {"servers", "run"}


def test_the_page_and_its_assets_are_served_from_the_wheel(installed: Installed) -> None:
    report = json.loads(installed.run([str(installed.venv / "bin" / "python"), "-c", SERVE_PAGE]).stdout)
    assert Path(report["page"]) == installed.site_packages / "services" / "api" / "page"
    assert report["statuses"] == [200, 200, 200]
