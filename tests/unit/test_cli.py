"""The `thumbs` command line: its version and the subcommands it offers."""
from __future__ import annotations

from importlib.metadata import version

import pytest

from services import cli
from services.cli import build_parser
from services.common.settings import Settings


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


def test_thumbs_run_starts_one_single_process_resizer_per_core() -> None:
    from thumbs_devtools.supervisor import default_scale, instances, parse_scale

    settings = Settings.from_env({})
    assert settings.resizer_workers == 1
    assert default_scale(settings, cores=4) == {"resizer": 4}
    # A resizer sized to every core itself runs once; `--scale` names the count outright.
    assert default_scale(Settings.from_env({"THUMBS_RESIZER_WORKERS": "0"}), cores=4) == {"resizer": 1}
    assert default_scale(Settings.from_env({"THUMBS_RESIZER_WORKERS": "2"}), cores=4) == {"resizer": 2}
    names = [i.name for i in instances({**default_scale(settings, cores=2), **parse_scale("fetcher=2")})]
    assert names == ["api", "fetcher", "fetcher-2", "resizer", "resizer-2", "projector", "notifier", "stats"]
