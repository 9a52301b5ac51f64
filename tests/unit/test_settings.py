import ipaddress
from pathlib import Path

import pytest

from services.common.settings import Settings, SettingsError, documented

README = Path(__file__).resolve().parents[2] / "README.md"


def test_environment_values_are_cast_and_validated() -> None:
    settings = Settings.from_env({
        "THUMBS_API_PORT": "9000", "THUMBS_FETCH_ALLOW_NETWORKS": "127.0.0.2/32, 10.1.0.0/16",
        "THUMBS_CASSANDRA_HOSTS": "a,b", "THUMBS_FETCH_TOTAL_TIMEOUT": "2.5", "UNRELATED": "x",
    })
    assert settings.api_port == 9000 and settings.fetch_total_timeout == 2.5
    assert settings.fetch_allow_networks == (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.1.0.0/16"))
    assert settings.cassandra_hosts == ("a", "b")
    assert Settings.from_env({}).fetch_allow_networks == ()  # nothing private is reachable by default


@pytest.mark.parametrize("name,value", [("THUMBS_API_PORT", "eighty"), ("THUMBS_FETCH_ALLOW_NETWORKS", "not-a-cidr")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_readme_documents_every_setting_with_its_default() -> None:
    text = README.read_text()
    for name, default, _doc in documented():
        assert f"| `{name}` | `{default}` |" in text or (not default and f"| `{name}` | (empty) |" in text), name


def test_state_dir_defaults_to_the_working_directory_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).state_dir == tmp_path.resolve() / ".thumbs"
    assert Settings.from_env({"THUMBS_STATE_DIR": "/srv/thumbs"}).state_dir == Path("/srv/thumbs")
