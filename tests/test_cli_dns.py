"""`hs100local dns` and `dns check` through the CLI (CliRunner and a real process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import dns.message
import dns.query
import dns.rcode
import prockit
from click.testing import CliRunner

from hs100local.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_check_evaluates_the_rules_locally():
    out = invoke("dns", "check", "N-Devs.TPLinkCloud.com.")
    assert out.exit_code == 0
    assert "sinkholed by tplinkcloud.com (redirect)" in out.stdout
    data = json.loads(invoke("dns", "check", "eviltplinkcloud.com", "--json").stdout)
    assert data == {"name": "eviltplinkcloud.com", "type": "A", "action": "forward"}
    data = json.loads(invoke("dns", "check", "x.pool.ntp.org", "--type", "aaaa",
                             "--json").stdout)
    assert (data["action"], data["answer"]) == ("ntp", "NOERROR, no answer (SOA)")
    data = json.loads(invoke("dns", "check", "a.example.test", "--sinkhole",
                             "example.test=redirect:198.18.0.9", "--json").stdout)
    assert data["answer"] == "A 198.18.0.9"
    assert "forwarded" in invoke("dns", "check", "n-devs.tplinkcloud.com",
                                 "--no-default-rules").stdout


def test_check_usage_errors():
    for args in (["dns", "check", "a..b"], ["dns", "check", "x.test", "--type", "BOGUS"],
                 ["dns", "check", "x.test", "--sinkhole", "x.test=nope"],
                 ["dns", "check", "x.test", "--server", "not-an-ip"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)


def test_check_against_a_silent_server_is_exit_3():
    result = invoke("dns", "check", "x.test", "--server", "127.0.0.1:9", "--timeout", "0.3")
    assert result.exit_code == 3 and "no DNS answer" in result.stderr


def test_dns_server_process_answers_and_records(tmp_path):
    db = tmp_path / "events.db"
    env = {**os.environ, "HS100LOCAL_DB": str(db)}
    proc = prockit.spawn(
        [sys.executable, "-u", "-m", "hs100local", "dns", "--listen", "127.0.0.1:0",
         "--upstream", "127.0.0.1:9", "--sinkhole", "plug.test=null"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"DNS on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(match.group(1))
        reply = dns.query.udp(dns.message.make_query("n-devs.tplinkcloud.com", "A"),
                              "127.0.0.1", port=port, timeout=3)
        assert [i.to_text() for r in reply.answer for i in r] == ["127.0.0.1"]
        reply = dns.query.tcp(dns.message.make_query("x.plug.test", "A"), "127.0.0.1",
                              port=port, timeout=3)
        assert [i.to_text() for r in reply.answer for i in r] == ["0.0.0.0"]
        checked = invoke("dns", "check", "n-devs.tplinkcloud.com", "--server",
                         f"127.0.0.1:{port}", "--json")
        data = json.loads(checked.stdout)
        assert data["rcode"] == "NOERROR" and data["records"][0]["data"] == "127.0.0.1"
        # the upstream (port 9) is silent: SERVFAIL, not a made-up NXDOMAIN
        reply = dns.query.udp(dns.message.make_query("fwd.test", "A"), "127.0.0.1",
                              port=port, timeout=6)
        assert reply.rcode() == dns.rcode.SERVFAIL
    finally:
        prockit.finish(proc)  # SIGTERM: it flushes its events
    from hs100local.events import EventStore

    with EventStore(db) as store:
        rows = store.events(kind="dns")
    seen: dict[tuple[str, str, str], int] = {}
    for e in rows:
        key = (e.details["name"], e.details["type"], e.details["action"])
        seen[key] = seen.get(key, 0) + e.count
    assert seen == {("n-devs.tplinkcloud.com", "A", "redirect"): 2,
                    ("x.plug.test", "A", "null"): 1}
    # the second query for the cloud name (by `dns check`) folds into the first row,
    # unless a minute boundary fell between them
    assert len(rows) in (2, 3)


def test_dns_refuses_to_forward_to_itself():
    result = invoke("dns", "--listen", "127.0.0.1:5399", "--upstream", "127.0.0.1:5399")
    assert result.exit_code == 2 and "no upstream" in result.stderr
