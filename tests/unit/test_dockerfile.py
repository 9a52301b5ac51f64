"""deploy/Dockerfile builds a lean, non-root image from a wheel and the hashed lock (checked without a Docker engine)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
# Everything an image may take from the build context: what the wheel is made of, and the lock.
ALLOWED_SOURCES = {"pyproject.toml", "README.md", "schemas", "services", "deploy/requirements.lock"}

Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    parsed = [line.strip().split(None, 1) for line in joined.splitlines() if line.strip()]
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in parsed]


def final_stage() -> list[Instruction]:
    steps = instructions()
    start = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[start:]


def copy_sources(arguments: str) -> list[str]:
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    return words[:-1]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_it_is_a_build_stage_and_a_final_stage() -> None:
    stages = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert any(keyword == "RUN" and "pip wheel" in arguments for keyword, arguments in instructions())


def test_the_final_stage_runs_as_a_user_that_is_not_root() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"} and group not in {"root", "0"}


def test_nothing_but_the_wheels_sources_and_the_lock_is_copied() -> None:
    for keyword, arguments in instructions():
        assert keyword != "ADD", "ADD fetches and unpacks; COPY says what it copies"
        if keyword == "COPY" and "--from=" not in arguments:
            sources = {source.removeprefix("./").rstrip("/") for source in copy_sources(arguments)}
            assert sources <= ALLOWED_SOURCES, f"COPY {arguments}: tests, bench and devtools stay out of the image"


def test_dependencies_come_from_the_lock_in_a_layer_before_the_code() -> None:
    steps = final_stage()
    lock_install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "-r /tmp/requirements.lock" in a)
    assert "--require-hashes" in steps[lock_install][1]
    wheel_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "--from=build" in a)
    assert lock_install < wheel_copy
    assert all(k != "COPY" or "requirements.lock" in a for k, a in steps[:lock_install])
    assert any(k == "RUN" and "--no-deps" in a and "pip check" in a for k, a in steps[wheel_copy:])


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    blocks = re.split(r"\n(?=\S)", LOCK.read_text())
    pins = {normalized(m.group(1)): block for block in blocks if (m := re.match(r"([A-Za-z0-9_.-]+)==\S+", block))}
    assert pins and all("--hash=sha256:" in block for block in pins.values())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = normalized(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        assert name in pins, f"{name} is a dependency in pyproject.toml but not in {LOCK.name}: run `make lock`"
    test_only = {normalized(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in project["optional-dependencies"]["test"]}
    assert not test_only & set(pins), "the lock is for the runtime only"
