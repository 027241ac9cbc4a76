"""The `serve` config: the example file, each key's checks, flags over keys, CLI errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hs100local.cli import cli
from hs100local.config import WEB_KEYS, ConfigError, ServeConfig, from_mapping, load

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hs100local.toml"

# key -> a value of the right TOML type but wrong, and a word the error must contain
BAD = {
    "dns": ("192.168.1.2:99999", "IPv4ADDR"),
    "ntp": (["not an address"], "IPv4ADDR"),
    "cloud": (True, "want"),
    "upstream": (False, "want"),
    "db": ("", "non-empty"),
    "user": (3, "string"),
    "assume-synced": ("yes", "true or false"),
    "allow": (["192.168.1.0/33"], "192.168.1.0/33"),
    "sinkhole": (["x.test=bogus"], "mode"),
    "default-rules": (1, "true or false"),
    "ttl": (86401, "out of range"),
    "dns-rate-limit": (-1, "out of range"),
    "stratum": (16, "out of range"),
    "ntp-rate-limit": ("fast", "number"),
    "cloud-mode": ("intercept", "handshake"),
    "cloud-rate-limit": (-5, "out of range"),
    "retention-days": (0, "out of range"),
    "max-db-mb": (0.5, "out of range"),
    "time-interval": (-1, "out of range"),
    "time-threshold": ([], "number"),
    "zone": ("Mars/Olympus_Mons", "Mars/Olympus_Mons"),
    "zones": ({"Kitchen": 110}, "out of range"),
    "discover-interval": (True, "number"),
    "interfaces": ([1], "strings"),
    "log-level": ("loud", "debug"),
    "web": ({"listen": "192.0.2.1"}, "needs a 'token'"),
}


def test_the_example_documents_every_key_and_loads():
    config = load(EXAMPLE)
    text = EXAMPLE.read_text()
    top, _, web = text.partition("\n[web]\n")
    documented = set(re.findall(r"^([a-z-]+) = ", top, re.M)) | set(
        re.findall(r"^\[([a-z]+)\]", text, re.M))
    assert documented == set(ServeConfig().key_names)
    # the [web] table: every key, set or shown commented out
    assert set(re.findall(r"^(?:# )?([a-z-]+) = ", web, re.M)) == set(WEB_KEYS)
    assert config.web.listen == (("127.0.0.1", 8099),)
    assert config.dns == (("192.168.1.2", 53),) and config.upstream == (("192.168.1.1", 53),)
    assert config.zones == (("Holiday flat", 39),)


def test_every_key_has_a_bad_value_case():
    assert set(BAD) == set(ServeConfig().key_names)


@pytest.mark.parametrize("key", sorted(BAD))
def test_a_bad_value_is_an_error_naming_the_key(key):
    value, word = BAD[key]
    with pytest.raises(ConfigError) as caught:
        from_mapping({key: value}, "test.toml")
    message = str(caught.value)
    assert f"test.toml: key '{key}" in message and word in message, message


def test_unknown_key_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="key 'dsn': unknown key"):
        from_mapping({"dsn": "127.0.0.1:53"}, "x.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("dns = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_values_and_defaults():
    config = from_mapping({"dns": "10.0.0.1", "ntp": False, "cloud": ["10.0.0.1:50443"],
                           "zone": 39, "time-interval": 0})
    assert config.dns == (("10.0.0.1", 53),) and config.ntp == ()
    assert config.cloud == (("10.0.0.1", 50443),)
    assert config.zone == "39" and config.time_interval == 0
    assert ServeConfig().dns == (("127.0.0.1", 5353),)  # unprivileged demo defaults


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("key", ["dns", "stratum", "zone", "cloud-mode"])
def test_serve_with_a_bad_config_exits_2_naming_the_key(tmp_path, key):
    value, _word = BAD[key]
    path = tmp_path / "bad.toml"
    rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
    path.write_text(f"{key} = {rendered}\n")
    result = invoke("serve", "--config", str(path))
    assert result.exit_code == 2, result.output
    assert f"key '{key}'" in result.stderr and len(result.stderr.strip().splitlines()) <= 3


def test_flags_override_the_file_and_are_checked_too(tmp_path):
    result = invoke("serve", "--dns", "nope")
    assert result.exit_code == 2 and "command line: key 'dns'" in result.stderr
    result = invoke("serve", "--dns", "127.0.0.1:5353", "--no-dns")
    assert result.exit_code == 2 and "contradict" in result.stderr
    config = from_mapping({"stratum": 2}, "x.toml")
    merged = from_mapping({"dns": False}, "command line", base=config)
    assert merged.stratum == 2 and merged.dns == ()
