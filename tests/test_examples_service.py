"""The service definitions in examples/: the systemd unit and the OpenWrt procd script.

The unit is parsed and checked for what the daemon needs (the command, the one
capability, SIGHUP for reload, a writable state directory that matches the example
config's ``db``, the system calls behind ntp_adjtime), then, where systemd-analyze is
installed, verified and scored by systemd itself. The procd script is run the way
OpenWrt runs it (``/bin/sh /etc/rc.common SCRIPT ACTION``) with a stand-in rc.common
whose procd functions record their arguments, so the test sees exactly the instance
definition procd would get and the signal a reload sends.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path, PurePosixPath

import prockit
import pytest

from hs100local.config import load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
UNIT = EXAMPLES / "hs100local.service"
INIT = EXAMPLES / "openwrt" / "hs100local.init"
TEMPLATE = EXAMPLES / "hs100local.toml"
CONFIG_PATH = "/etc/hs100local/hs100local.toml"  # where both install the template
STATE_DIR = "/var/lib/hs100local"  # StateDirectory=hs100local; /tmp/lib/... on OpenWrt


# ------------------------------------------------------------------ systemd unit


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)] in order, keys may repeat (as systemd allows).

    systemd.syntax(7): '#' and ';' start comment lines, a trailing backslash joins
    the next line with a space.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


def words(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> set[str]:
    return {w for v in values(unit, section, key) for w in v.split()}


def yes(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def test_unit_execstart_runs_serve_with_the_config(unit) -> None:
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert PurePosixPath(argv[0]).is_absolute()
    assert PurePosixPath(argv[0]).name == "hs100local"
    assert argv[1:] == ["serve", "--config", CONFIG_PATH]
    assert one(unit, "Service", "Type") in ("exec", "simple")


def test_unit_binds_low_ports_with_one_capability_as_a_plain_user(unit) -> None:
    assert words(unit, "Service", "AmbientCapabilities") == {"CAP_NET_BIND_SERVICE"}
    assert words(unit, "Service", "CapabilityBoundingSet") == {"CAP_NET_BIND_SERVICE"}
    assert yes(one(unit, "Service", "NoNewPrivileges"))
    user = values(unit, "Service", "User")
    dynamic = [yes(v) for v in values(unit, "Service", "DynamicUser")]
    assert any(dynamic) or (user and user[-1] not in ("root", "0"))
    # A user namespace would own the capability, not the host's network: no low ports.
    assert not any(yes(v) for v in values(unit, "Service", "PrivateUsers"))


def test_unit_reload_sends_sighup_to_the_main_process(unit) -> None:
    argv = shlex.split(one(unit, "Service", "ExecReload"))
    assert PurePosixPath(argv[0]).name == "kill"
    signal = argv[argv.index("-s") + 1] if "-s" in argv else argv[1].lstrip("-")
    assert signal.upper().removeprefix("SIG") == "HUP"
    assert argv[-1] in ("$MAINPID", "${MAINPID}")


def test_unit_restarts_on_failure_but_not_on_a_config_error(unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    # exit 2 = a bad config value: restarting would repeat it forever.
    assert "2" in words(unit, "Service", "RestartPreventExitStatus")
    assert "network-online.target" in words(unit, "Unit", "After")
    assert "network-online.target" in words(unit, "Unit", "Wants")
    assert "multi-user.target" in words(unit, "Install", "WantedBy")


def test_unit_state_directory_holds_the_database(unit) -> None:
    assert one(unit, "Service", "StateDirectory") == PurePosixPath(STATE_DIR).name
    env = dict(shlex.split(v)[0].split("=", 1) for v in values(unit, "Service", "Environment"))
    db = PurePosixPath(env["HS100LOCAL_DB"])
    assert db.parent == PurePosixPath(STATE_DIR)
    # The example's `db` key wins over HS100LOCAL_DB, and ProtectSystem=strict leaves
    # only the state directory writable: the copied template must point into it.
    assert one(unit, "Service", "ProtectSystem") == "strict"
    template_db = load(TEMPLATE).db
    assert template_db is None or PurePosixPath(template_db).parent == PurePosixPath(STATE_DIR)


def test_unit_sandbox_leaves_what_the_daemon_uses(unit) -> None:
    families = words(unit, "Service", "RestrictAddressFamilies")
    assert {"AF_INET", "AF_UNIX", "AF_NETLINK"} <= families  # netifaces uses netlink
    assert not any(f.startswith("~") for f in families)
    for key in ("PrivateNetwork", "ProtectClock", "ProcSubset", "IPAddressDeny"):
        # serving and broadcasting; ntp_adjtime; /proc/net/arp; LAN, upstream, broadcast
        assert not [v for v in values(unit, "Service", key) if v and v not in ("no", "all")], key
    filters = values(unit, "Service", "SystemCallFilter")
    if filters:
        # The NTP server reads the kernel's sync state with ntp_adjtime (adjtimex or
        # clock_adjtime, by libc); an allow list without them reports stratum 16.
        assert not filters[0].startswith("~")
        allowed = {w for f in filters if not f.startswith("~") for w in f.split()}
        assert {"adjtimex", "clock_adjtime"} <= allowed
        assert not any("@clock" in f or "adjtime" in f for f in filters if f.startswith("~"))


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return tool


def _runnable_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart's program replaced by an executable that exists here
    (verify checks it), under the same file name."""
    stub = tmp_path / "hs100local"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={stub}", UNIT.read_text(), flags=re.M)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("[Service]\n", f"[Service]\n{extra}", 1))
    return copy


def _verify(tool: str, unit_file: Path) -> tuple[int, list[str]]:
    result = prockit.run([tool, "verify", str(unit_file)], capture_output=True,
                         text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if unit_file.name in line]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path) -> None:
    tool = _systemd_analyze()
    returncode, complaints = _verify(tool, _runnable_copy(tmp_path))
    assert returncode == 0, complaints
    assert complaints == []  # e.g. "Unknown key ...", "Failed to parse ..."


def test_systemd_analyze_verify_would_notice_a_bad_line(tmp_path) -> None:
    """The check above is only worth something if a typo makes it complain."""
    tool = _systemd_analyze()
    _, complaints = _verify(tool, _runnable_copy(tmp_path, extra="ProtectHme=yes\n"))
    assert any("ProtectHme" in line for line in complaints)


def test_systemd_analyze_security_exposure_is_low(tmp_path) -> None:
    tool = _systemd_analyze()
    version = prockit.run([tool, "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", version)
    if match is None or int(match.group(1)) < 250:
        pytest.skip(f"systemd-analyze security --offline needs systemd 250+ ({version[:20]!r})")
    copy = _runnable_copy(tmp_path)
    # --threshold is the exposure level times 10: fail above 3.0 ("OK" is up to 4.9).
    result = prockit.run([tool, "security", "--offline=true", "--threshold=30",
                             "--no-pager", str(copy)], capture_output=True, text=True,
                         timeout=60)
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, overall or result.stderr


# ---------------------------------------------------------------- OpenWrt procd

SEP = "\x1f"

# A stand-in for /etc/rc.common with procd.sh: the same order as OpenWrt's (defaults,
# then the script is sourced, then the procd actions), each procd_* call recorded as
# one line of its name and arguments. set -u: a misspelt variable fails here.
FAKE_RC_COMMON = r"""
set -u
initscript=$1
action=${2:-help}
shift 2

record() {
	printf '%s' "$1"; shift
	for arg in "$@"; do printf '\037%s' "$arg"; done
	printf '\n'
} >> "$PROCD_LOG"

start_service() { return 0; }
stop_service() { return 0; }
service_triggers() { return 0; }

for fn in procd_open_instance procd_set_param procd_append_param procd_close_instance \
	procd_send_signal procd_kill procd_running procd_add_jail procd_add_jail_mount \
	procd_open_trigger procd_close_trigger procd_add_reload_trigger \
	procd_add_interface_trigger procd_add_reload_interface_trigger \
	procd_add_config_trigger procd_add_raw_trigger procd_add_validation; do
	eval "$fn() { record $fn \"\$@\"; }"
done
procd_open_service() { record procd_open_service "$@"; }
procd_close_service() { service_triggers; record procd_close_service "$@"; }

. "$initscript"

[ -n "${USE_PROCD:-}" ] || { echo "USE_PROCD is not set" >&2; exit 90; }
rc_procd() {
	procd_open_service "$(basename "$initscript")" "$initscript"
	"$@"
	procd_close_service set
}
start() { rc_procd start_service "$@"; }
stop() { stop_service "$@"; procd_kill "$(basename "$initscript")" "${1:-}"; }
reload() {
	if type reload_service >/dev/null 2>&1; then reload_service "$@"; else start; fi
}
$action "$@"
"""


def _shells() -> list[list[str]]:
    shells = [["/bin/sh"]]
    if shutil.which("busybox"):  # OpenWrt's shell
        shells.append([shutil.which("busybox") or "busybox", "sh"])
    return shells


@pytest.fixture(params=_shells(), ids=lambda argv: " ".join(PurePosixPath(a).name for a in argv))
def run_init(request, tmp_path):
    """run_init(action) -> [(procd function, [args])], the script installed as
    .../etc/init.d/hs100local (procd names the service after the file)."""
    rc_common = tmp_path / "rc.common"
    rc_common.write_text(FAKE_RC_COMMON)
    installed = tmp_path / "etc" / "init.d" / "hs100local"
    installed.parent.mkdir(parents=True)
    shutil.copy(INIT, installed)
    log = tmp_path / "procd.log"

    def run(action: str) -> list[tuple[str, list[str]]]:
        log.write_text("")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROCD_LOG": str(log)}
        result = prockit.run([*request.param, str(rc_common), str(installed), action],
                             capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        calls = []
        for line in log.read_text().splitlines():
            name, *args = line.split(SEP)
            calls.append((name, args))
        return calls

    run.service_name = installed.name  # type: ignore[attr-defined]
    return run


def test_init_script_is_valid_sh() -> None:
    first = INIT.read_text().splitlines()[0]
    assert first == "#!/bin/sh /etc/rc.common"
    for shell in _shells():
        result = prockit.run([*shell, "-n", str(INIT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def _instance(calls: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    names = [name for name, _ in calls]
    assert names.count("procd_open_instance") == 1
    assert names.count("procd_close_instance") == 1
    opened, closed = names.index("procd_open_instance"), names.index("procd_close_instance")
    assert opened < closed
    params: dict[str, list[str]] = {}
    for name, args in calls[opened + 1:closed]:
        if name == "procd_set_param":
            assert args[0] not in params, f"{args[0]} set twice"
            params[args[0]] = args[1:]
    return params


def test_init_start_defines_the_serve_instance(run_init) -> None:
    calls = run_init("start")
    assert calls[0][0] == "procd_open_service"
    assert calls[0][1][0] == run_init.service_name
    assert calls[-1][0] == "procd_close_service"
    params = _instance(calls)

    argv = params["command"]
    assert PurePosixPath(argv[0]).is_absolute()
    assert PurePosixPath(argv[0]).name == "hs100local"
    assert argv[1:] == ["serve", "--config", CONFIG_PATH]

    assert "respawn" in params
    assert all(v.isdigit() for v in params["respawn"]), params["respawn"]
    assert params["stderr"] == ["1"]  # the daemon logs to stderr: into syslog
    assert params["file"] == [CONFIG_PATH]  # procd notices when the config changed

    env = dict(item.split("=", 1) for item in params["env"])
    db = PurePosixPath(env["HS100LOCAL_DB"])
    assert db.is_absolute() and db.suffix == ".db"
    # The daemon hands the database's directory to `user`: never /tmp or /overlay itself.
    assert db.parent.name == "hs100local"
    # No procd `user`: the daemon must start as root to bind ports 53/123/443.
    assert "user" not in params


def test_init_triggers_call_this_script(run_init) -> None:
    calls = run_init("start")
    for name, args in calls:
        if name.startswith("procd_add_") and name.endswith("_trigger"):
            scripts = [a for a in args if a.startswith("/etc/init.d/")]
            assert scripts == [f"/etc/init.d/{run_init.service_name}"], (name, args)
            assert args[-1] in ("restart", "reload", "start"), (name, args)


def test_init_reload_sends_hup_and_restarts_nothing(run_init) -> None:
    calls = run_init("reload")
    assert [name for name, _ in calls] == ["procd_send_signal"]
    service, *rest = calls[0][1]
    assert service == run_init.service_name
    instance, signal = [*rest, "", ""][:2]
    assert instance in ("", "*")
    assert signal.upper().removeprefix("SIG") in ("HUP", "1")


def test_init_stop_removes_the_service(run_init) -> None:
    assert run_init("stop") == [("procd_kill", [run_init.service_name, ""])]


# -------------------------------------------------------------------------- both


@pytest.mark.parametrize("example", [UNIT, INIT], ids=lambda p: p.name)
def test_the_config_it_reads_is_the_installed_template(example: Path) -> None:
    """Both read CONFIG_PATH and tell how examples/hs100local.toml gets there."""
    assert TEMPLATE.is_file()
    load(TEMPLATE)  # the template users copy is itself a valid config
    text = example.read_text()
    assert f"--config {CONFIG_PATH}" in text or f'CONFIG={CONFIG_PATH}' in text
    install_lines = [line for line in text.splitlines()
                     if line.startswith("#") and "examples/hs100local.toml" in line]
    assert any(CONFIG_PATH in line for line in install_lines), install_lines


def test_the_service_user_is_the_templates_user() -> None:
    """The unit runs as the user the template names; the OpenWrt steps create it."""
    name = load(TEMPLATE).user
    assert name is not None
    assert one(parse_unit(UNIT.read_text()), "Service", "User") == name
    assert re.search(rf"user_add {re.escape(name)}\b", INIT.read_text())
