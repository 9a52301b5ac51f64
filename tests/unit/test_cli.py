"""The `thumbs` command line: its version and the subcommands it offers."""
from __future__ import annotations

from importlib.metadata import version

import pytest

from services import cli
from services.cli import build_parser


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"thumbs {version('thumbs')}\n"


def test_servers_and_run_come_from_the_installed_devtools() -> None:
    parser = build_parser()
    assert parser.parse_args(["servers", "status"]).handler.__module__ == "thumbs_devtools.commands"
    run = parser.parse_args(["run", "--scale", "fetcher=2"])
    assert (run.handler.__module__, run.scale) == ("thumbs_devtools.supervisor", "fetcher=2")


def test_without_devtools_the_local_commands_are_absent(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # what a production install finds
    parser = cli.build_parser()
    assert parser.parse_args(["api"]).handler is cli.COMMANDS["api"][1]
    for command in ("servers", "run"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command])
        assert done.value.code == 2
        assert f"invalid choice: '{command}'" in capsys.readouterr().err
