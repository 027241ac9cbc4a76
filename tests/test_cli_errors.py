"""Errors a script and a person can use: one line, exit codes, JSON on stdout, help for
every option, --timeout for the whole command, requests checked before sending."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import prockit
import pytest
from click.testing import CliRunner

from hs100local.cli import cli

ERROR = "hs100local: error: "


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env={"HS100LOCAL_HOST": None, **(env or {})})


def sub(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "HS100LOCAL_HOST"}
    environ.update(env or {})
    return prockit.run([sys.executable, "-m", "hs100local", *args], capture_output=True,
                          text=True, timeout=30, env=environ, check=False)


def one_error(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), stderr
    return lines[0][len(ERROR):]


class Listener:
    """A TCP port that accepts and counts connections, reads and never answers: a
    silent plug, and proof of whether anything was sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.peers: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.peers.append(conn)
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                self.received += conn.recv(65536)

    def close(self) -> None:
        self.sock.close()
        for conn in self.peers:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def silent():
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


# ------------------------------------------------------------ one line, exit codes


@pytest.mark.parametrize("args, code, words", [
    (["--bogus", "on"], 2, "No such option '--bogus'"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
    (["on"], 2, "no plug given"),
    (["-H", "1.2.3.4:99999", "on"], 2, "invalid port"),
    (["-H", "127.0.0.1", "time", "set", "yesterday"], 2, "is not YYYY-MM-DDTHH:MM:SS"),
    (["-H", "127.0.0.1", "reset"], 2, "add --yes"),
])
def test_usage_errors_are_one_line_with_a_hint(args, code, words):
    result = sub(*args)
    assert result.returncode == code
    line = one_error(result.stderr)
    assert words in line and "; see 'hs100local" in line and "--help'" in line
    assert result.stdout == ""


def test_json_failures_are_json_on_stdout(emulator, silent):
    usage = sub("--json", "-H", "127.0.0.1:1:2", "on")
    assert usage.returncode == 2
    assert json.loads(usage.stdout) == {"error": one_error(usage.stderr), "exit": 2}
    parse = sub("--json", "--bogus")
    assert parse.returncode == 2 and json.loads(parse.stdout)["exit"] == 2
    plug_error = sub("-H", f"127.0.0.1:{emulator.port}", "emeter", "day", "--json",
                     "--year", "2026")
    assert plug_error.returncode == 0  # the HS110 has a meter: a list
    refused = run("-H", f"127.0.0.1:{emulator.port}", "--json", "cloud", "unbind")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout) == {"error": one_error(refused.stderr), "exit": 1}
    timeout = sub("--json", "--timeout", "0.3", "-H", f"127.0.0.1:{silent.port}", "state")
    assert timeout.returncode == 3
    assert json.loads(timeout.stdout) == {"error": one_error(timeout.stderr), "exit": 3}


def test_a_failure_after_the_json_result_adds_no_second_document(emulator):
    """time sync --all prints its table as JSON, then fails: stdout stays one document."""
    result = run("--json", "-H", f"127.0.0.1:{emulator.port}", "raw",
                 '{"system":{"nosuch":{}}}')
    assert result.exit_code == 1
    assert json.loads(result.stdout)["system"]["nosuch"]["err_code"] == -2
    assert "system.nosuch" in one_error(result.stderr)


# -------------------------------------------------------------------- --timeout


def test_timeout_bounds_the_whole_command_and_says_what_it_waited(silent):
    started = time.monotonic()
    result = sub("-H", f"127.0.0.1:{silent.port}", "--timeout", "1", "state")
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    line = one_error(result.stderr)
    assert line == f"no reply from 127.0.0.1:{silent.port} within 1.0 s", line
    assert silent.connections == 1  # no second try once the time is up
    # The whole process, interpreter start-up included (it was 2.5 s with a retry).
    assert elapsed < 2.0, elapsed


# ------------------------------------------------------------------------- raw


@pytest.mark.parametrize("request_text, words", [
    ("[1,2]", "a request is a JSON object of modules, not an array"),
    ('"str"', "a request is a JSON object of modules, not a string"),
    ("{}", "the request names no module"),
    ('{"system":[1]}', "'system' must be an object of methods, not an array"),
    ('{"system":{"get_sysinfo":5}}', "parameters of system.get_sysinfo must be an object or "
                                     "null, not a number"),
    ("{nope", "not JSON"),
    ('{"system":{"set_dev_alias":{"alias":"' + "x" * 70000 + '"}}}', "a plug message is at "
                                                                   "most 65536"),
])
def test_raw_checks_the_request_and_sends_nothing_bad(silent, request_text, words):
    result = run("-H", f"127.0.0.1:{silent.port}", "raw", request_text)
    assert result.exit_code == 2
    assert words in one_error(result.stderr)
    assert silent.connections == 0


def test_raw_accepts_null_parameters_and_a_context(strip):
    ok = run("-H", f"127.0.0.1:{strip.port}", "--json", "raw",
             '{"system":{"get_sysinfo":null}}')
    assert ok.exit_code == 0, ok.output
    child = strip.server.plug.child_id(1)
    switched = run("-H", f"127.0.0.1:{strip.port}", "raw",
                   '{"context":{"child_ids":["' + child + '"]},'
                   '"system":{"set_relay_state":{"state":1}}}')
    assert switched.exit_code == 0
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets])[:2] == [False, True]


# ------------------------------------------------------------------ -H messages


def test_unknown_name_says_neither_alias_nor_host(tmp_path):
    nothing = run("--db", str(tmp_path / "none.db"), "-H", "nosuchalias", "on")
    assert nothing.exit_code == 2
    assert one_error(nothing.stderr).startswith(
        "'nosuchalias': there is no plug inventory yet to look aliases up in (run "
        "'hs100local discover'), and no host has that name")


def test_unknown_mac_says_where_it_would_search(tmp_path):
    result = run("--db", str(tmp_path / "none.db"), "--timeout", "1", "-H",
                 "AA:BB:CC:DD:EE:FF", "on")
    assert result.exit_code == 3
    notice, error = result.stderr.splitlines()
    # The tests broadcast on loopback only (HS100LOCAL_INTERFACES=lo).
    assert notice == ("hs100local: searching for AA:BB:CC:DD:EE:FF by broadcast on "
                      "lo (127.0.0.0/8) (up to 1.0 s)")
    assert error.startswith(ERROR + "no plug with MAC AA:BB:CC:DD:EE:FF answered discovery")


# ---------------------------------------------------------------- small things


def test_alias_refuses_empty_and_control_characters(emulator):
    for bad in ("", "   ", "a\nb"):
        result = run("-H", f"127.0.0.1:{emulator.port}", "alias", bad)
        assert result.exit_code == 2, bad
        one_error(result.stderr)
    assert emulator.call(lambda: emulator.server.requests) == 0
    assert run("-H", f"127.0.0.1:{emulator.port}", "alias", "Kettle").stdout == "Kettle\n"


def test_db_in_a_missing_folder_is_a_usage_error(tmp_path):
    for args in (["plugs"], ["events"], ["report"], ["plugs", "changes"], ["-H", "lamp", "on"]):
        result = run("--db", str(tmp_path / "no" / "such" / "x.db"), *args)
        assert result.exit_code == 2, args
        assert f"folder '{tmp_path / 'no' / 'such'}' does not exist" in one_error(result.stderr)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", [["events"], ["watch"], ["report"], ["plugs"],
                                     ["plugs", "changes"], ["plugs", "forget"]])
def test_database_readers_have_no_timeout(command):
    assert "--timeout" not in run(*command, "--help").stdout


def test_schedule_and_countdown_rules_are_readable(emulator):
    plug = emulator.server.plug
    emulator.call(plug.handle, {"schedule": {"add_rule": {
        "name": "wake", "enable": 1, "wday": [0, 1, 1, 1, 1, 1, 0], "repeat": 1,
        "sact": 1, "stime_opt": 0, "smin": 450, "soffset": 0, "etime_opt": -1,
        "eact": -1, "emin": 0, "year": 0, "month": 0, "day": 0}}})
    emulator.call(plug.handle, {"schedule": {"add_rule": {
        "name": "", "enable": 0, "wday": [1, 0, 0, 0, 0, 0, 1], "repeat": 1, "sact": 0,
        "stime_opt": 2, "smin": 0, "soffset": 15, "etime_opt": -1, "eact": -1}}})
    emulator.call(plug.handle, {"count_down": {"add_rule": {
        "name": "tea", "enable": 1, "delay": 5400, "act": 0}}})
    host = f"127.0.0.1:{emulator.port}"
    table = run("-H", host, "schedule", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "ENABLED", "DAYS", "TIME", "ACTION", "NAME"]
    assert table[1].split()[1:] == ["yes", "weekdays", "07:30", "on", "wake"]
    assert table[2].split()[1:] == ["no", "weekends", "sunset+15", "off", "-"]
    rules = json.loads(run("-H", host, "--json", "schedule", "list").stdout)
    assert [r["smin"] for r in rules] == [450, 0]  # --json: the firmware's objects
    countdown = run("-H", host, "countdown", "list").stdout.splitlines()
    assert countdown[0].split() == ["ID", "ENABLED", "AFTER", "ACTION", "REMAINING", "NAME"]
    assert countdown[1].split()[1:] == ["yes", "1h30m", "off", "-", "tea"]
    assert run("-H", host, "-c", "1", "schedule", "list").exit_code == 2  # not a strip


def test_emeter_history_of_a_whole_strip_is_labelled(start_emulator):
    strip = start_emulator("hs300", load_w=100.0)
    host = f"127.0.0.1:{strip.port}"
    run("-H", host, "-c", "1", "on")
    run("-H", host, "-c", "3", "on")
    lines = run("-H", host, "emeter", "day").stdout.splitlines()
    assert lines[0].split() == ["DATE", "#1", "#2", "#3", "#4", "#5", "#6", "ALL", "(kWh)"]
    assert lines[-1] == ("outlets: #1 Plug 1, #2 Plug 2, #3 Plug 3, #4 Plug 4, #5 Plug 5, "
                         "#6 Plug 6")
    data = json.loads(run("-H", host, "--json", "emeter", "month").stdout)
    assert [o["index"] for o in data["outlets"]] == [1, 2, 3, 4, 5, 6]
    assert all("entries" in o for o in data["outlets"]) and isinstance(data["total"], list)


# ------------------------------------------------------------------ help, completion


def all_commands():
    found = []

    def walk(group, path):
        for name, command in sorted(group.commands.items()):
            found.append(([*path, name], command))
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(cli, [])
    return found


@pytest.mark.parametrize("path, command", [([], cli), *all_commands()],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_has_help_and_every_option_says_what_it_does(path, command):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert command.help or command.short_help, path
    for param in command.params:
        if param.param_type_name == "option":
            assert getattr(param, "help", None), (path, param.name)
            assert param.opts[0] in result.stdout or param.hidden, (path, param.opts)


def complete(words: str, env: dict | None = None) -> list[str]:
    result = sub(env={"_HS100LOCAL_COMPLETE": "bash_complete", "COMP_WORDS": words,
                      "COMP_CWORD": str(len(words.split(" ")) - 1), **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_h_completes_inventory_aliases_and_macs(tmp_path, strip):
    from test_cli_safety import strip_in_inventory

    db = strip_in_inventory(strip, tmp_path)
    mac = strip.server.plug.mac
    assert complete("hs100local -H Des", {"HS100LOCAL_DB": db}) == ["plain,Desk strip"]
    assert complete("hs100local -H plug", {"HS100LOCAL_DB": db}) == [
        f"plain,Plug {i}" for i in range(1, 7)]
    assert complete(f"hs100local -H {mac[:5]}", {"HS100LOCAL_DB": db}) == [f"plain,{mac}"]
    assert complete("hs100local --db " + db + " on -H Desk") == ["plain,Desk strip"]
    assert complete("hs100local ti") == ["plain,time"]
    for shell in ("bash", "zsh", "fish"):
        script = sub(env={"_HS100LOCAL_COMPLETE": f"{shell}_source"})
        assert script.returncode == 0 and "_HS100LOCAL_COMPLETE" in script.stdout


# ------------------------------------------------- odd input is one line, never a traceback


@pytest.mark.parametrize("args, words", [
    (["-c", "²", "state"], "no outlet '²'"),
    (["-H", "127.0.0.1:²", "state"], "invalid port"),
    (["-H", "a..b", "state"], "not a valid host name"),
    (["-H", "x" * 64, "state"], "not a valid host name"),
    (["-H", "", "state"], "is empty"),
    (["-c", " ", "state"], "is empty"),
    (["--timeout", "nan", "state"], "'nan' is not a finite number"),
    (["--timeout", "inf", "state"], "is not in the range"),
    (["--timeout", "1e308", "state"], "is not in the range"),
    (["raw", "[" * 2000 + "]" * 2000], "nested too deeply"),
    (["raw", '{"a":' * 2000 + "{}" + "}" * 2000], "nested too deeply"),
])
def test_odd_input_is_one_line_and_sends_nothing(strip, args, words):
    result = run("-H", f"127.0.0.1:{strip.port}", *args)
    assert result.exit_code == 2, result.output
    assert words in one_error(result.stderr)
    assert strip.call(lambda: strip.server.requests) <= 1  # at most the outlet lookup
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [False] * 6


def test_empty_h_does_not_fall_back_to_the_environment(silent):
    result = run("-H", "", "state", env={"HS100LOCAL_HOST": f"127.0.0.1:{silent.port}"})
    assert result.exit_code == 2 and silent.connections == 0


def test_an_alias_that_is_not_valid_text_is_refused(emulator):
    result = run("-H", f"127.0.0.1:{emulator.port}", "alias", "bad\udcff")
    assert result.exit_code == 2 and "not valid UTF-8 text" in one_error(result.stderr)


def test_db_that_is_a_folder_is_a_usage_error(tmp_path):
    result = run("--db", str(tmp_path), "plugs")
    assert result.exit_code == 2 and "is a folder" in one_error(result.stderr)


def test_a_closed_stdout_cuts_the_output_not_the_exit_code(emulator, silent):
    """`| head -0`: the plug was switched; exit 141 (as by SIGPIPE), no traceback."""
    for args, code in ((["-H", f"127.0.0.1:{emulator.port}", "on"], 141),
                       (["-H", f"127.0.0.1:{silent.port}", "--timeout", "0.3", "--json",
                         "state"], 3)):
        read, write = os.pipe()
        os.close(read)  # nobody reads: the first write gets EPIPE
        try:
            result = prockit.run([sys.executable, "-m", "hs100local", *args], stdout=write,
                                 stderr=subprocess.PIPE, text=True, timeout=30, check=False)
        finally:
            os.close(write)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert emulator.call(lambda: emulator.server.plug.relay.on) is True


@pytest.mark.parametrize("args", [[], ["cloud"], ["wifi"], ["schedule"], ["countdown"]])
def test_a_group_without_its_command_shows_its_help(args):
    result = sub(*args)
    assert result.returncode == 0 and result.stdout.startswith("Usage: hs100local")
    assert "Commands:" in result.stdout and result.stderr == ""


def test_wifi_join_refuses_an_outlet_before_asking_for_a_password(strip):
    result = CliRunner().invoke(cli, ["-H", f"127.0.0.1:{strip.port}", "-c", "1", "wifi",
                                      "join", "home"], input="")
    assert result.exit_code == 2 and "acts on the whole device" in result.stderr
    assert "Password" not in result.output
    no_input = CliRunner().invoke(cli, ["-H", f"127.0.0.1:{strip.port}", "wifi", "join",
                                        "home"], input="")
    assert no_input.exit_code == 2 and "no input for a prompt" in no_input.stderr
    assert strip.call(lambda: strip.server.requests) == 0
