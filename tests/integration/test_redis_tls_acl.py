"""Redis over TLS with certificates made here (a CA, the server's, a client's), and ACL users:
goodsd works through both, `goodsd check --redis` reports on them, and what Redis refuses (a
certificate, a command the ACL lacks) stops the start with exit 78. The ACL rule the README
gives is the one tested."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ops_cli import goodsd
from support import wait_for, write_config
from test_ops_metrics import free_port, scrape
from test_redis_outage import lines
from test_reload import reload

from goodsd.config import RedisConfig
from goodsd.localredis import LocalRedis
from goodsd.redisconn import Kind, classify, connect, refused_commands
from goodsd.store import Upkeep

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "acl-word-7"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificate(directory: Path, name: str, ca: str | None, *names: str) -> None:
    """``name``.pem and ``name``.key: a CA's own certificate (``ca`` None) or one signed by the
    CA ``ca``, for the DNS names and IP addresses ``names``."""
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    subject = f"/CN=goodsd test {name}"
    if ca is None:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                "-out", str(pem), "-days", "2", "-subj", subject)  # fmt: skip
        return
    request = directory / f"{name}.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
            "-subj", subject)  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={','.join(names)}\n" if names else "")
    openssl("x509", "-req", "-in", str(request), "-CA", str(directory / f"{ca}.pem"),
            "-CAkey", str(directory / f"{ca}.key"), "-CAcreateserial", "-out", str(pem),
            "-days", "2", "-extfile", str(extensions))  # fmt: skip


class TlsServer:
    """A redis-server that speaks TLS only, asks clients for a certificate, and the files a
    client needs: ``ca`` (which signed the server's and ``client``'s), ``stranger`` (a CA that
    signed nothing of this)."""

    def __init__(self, directory: Path, server: LocalRedis, port: int) -> None:
        self.directory = directory
        self.server = server
        self.port = port

    def file(self, name: str) -> str:
        return str(self.directory / name)

    def url(self, ca: str = "ca", client: str | None = "client") -> str:
        query = f"ssl_ca_certs={self.file(f'{ca}.pem')}"
        if client:
            query += f"&ssl_certfile={self.file(f'{client}.pem')}"
            query += f"&ssl_keyfile={self.file(f'{client}.key')}"
        return f"rediss://127.0.0.1:{self.port}/0?{query}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("tls")
    make_certificate(directory, "ca", None)
    make_certificate(directory, "stranger", None)
    make_certificate(directory, "server", "ca", "DNS:localhost", "IP:127.0.0.1")
    make_certificate(directory, "client", "ca")
    port = free_port()
    settings = (
        "--tls-port", str(port),
        "--tls-cert-file", str(directory / "server.pem"),
        "--tls-key-file", str(directory / "server.key"),
        "--tls-ca-cert-file", str(directory / "ca.pem"),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    with LocalRedis(settings=settings) as server:
        yield TlsServer(directory, server, port)


def test_tls_with_a_client_certificate_works_and_is_reported(
    tls_server, tmp_path, start_daemon, notify
):
    # Given a URL with the CA that signed the server's certificate, and a client certificate
    out = tmp_path / "handled"
    config = write_config(
        tmp_path, tls_server.url(), consumers={"handler": "sample_handlers:paced_record_to_file"}
    )
    # When goodsd runs and items are pushed
    daemon = start_daemon(config, notify=notify, env={"TEST_OUT": str(out)})
    notify.wait("READY", "1")
    assert goodsd(config, "push", "over", "tls").returncode == 0
    # Then they are handled
    wait_for(lambda: sorted(lines(out)) == ["over", "tls"], 10, "the items handled")
    # And check --redis says how TLS is used
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert (
        f"tls: yes; server certificate verified (required) against {tls_server.file('ca.pem')}; "
        f"client certificate {tls_server.file('client.pem')}" in checked.stdout
    ), checked.stdout
    assert daemon.stop() == 0


def test_a_server_certificate_not_trusted_is_a_config_error(tls_server, tmp_path, start_daemon):
    # Given a URL whose CA did not sign the server's certificate
    config = write_config(tmp_path, tls_server.url(ca="stranger"))
    # When goodsd checks Redis, then it says the handshake failed
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 78
    assert "TLS handshake failed" in checked.stderr and "certificate verify failed" in (
        checked.stderr
    ), checked.stderr
    # And goodsd refuses to start (exit 78), as for a password refused
    daemon = start_daemon(config)
    assert daemon.wait_exit(20) == 78
    assert "redis refused access: TLS handshake failed" in daemon.log(), daemon.log()


def test_check_redis_asks_for_a_missing_client_certificate(tls_server, tmp_path):
    # Given a URL without the client certificate the server asks for (which a TLS 1.3 server
    # tells only by hanging up, as one that goes away would: for `run`, an outage)
    config = write_config(tmp_path, tls_server.url(client=None))
    # When goodsd checks Redis, then it fails, asking about a client certificate
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 78
    assert "does the server want a client certificate (ssl_certfile, ssl_keyfile)?" in (
        checked.stderr
    ), checked.stderr


def readme_acl_rule(queue: str) -> list[str]:
    """The README's ACL SETUSER command for goodsd, for ``queue``, as arguments."""
    [line] = re.findall(r"^ACL SETUSER goodsd .*$", README.read_text(), re.M)
    line = line.replace("goods2", queue).replace(">the-password", f">{PASSWORD}")
    return shlex.split(line)


@pytest.fixture
def goodsd_user(r: redis.Redis) -> Iterator[None]:
    yield
    r.acl_deluser("goodsd")


def user_url(redis_server: LocalRedis) -> str:
    return redis_server.url.replace("unix://", f"unix://goodsd:{PASSWORD}@", 1)


def test_the_readme_acl_rule_is_all_goodsd_needs(
    r, redis_server, goodsd_user, tmp_path, start_daemon, notify
):
    # Given the README's user for the queue, nothing more
    r.execute_command(*readme_acl_rule("goods2"))
    out, port = tmp_path / "handled", free_port()
    config = write_config(
        tmp_path,
        user_url(redis_server),
        queue="goods2",
        consumers={"handler": "sample_handlers:record_to_file_unless_bad", "retries": 0},
        producer={"processes": 1, "source": "sample_sources:finite", "singleton": True},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    # When goodsd checks Redis, runs, and the operator commands do their work
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert "acl user: goodsd; every command goodsd needs is allowed" in checked.stdout
    # (Redis's own name for the role: not to be taken for goodsd's master process)
    assert "deployment: one server (standalone, primary) with 0 replica(s)" in checked.stdout
    # (it reads persistence settings with CONFIG GET where allowed, @admin: not here)
    assert "persistence: no AOF, RDB unknown (CONFIG not allowed)" in checked.stdout
    assert {entry["object"] for entry in r.acl_log()} == {"config|get"}
    r.acl_log_reset()
    env = {"TEST_OUT": str(out), "TEST_SOURCE_ITEMS": "100"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    assert goodsd(config, "push", "bad-1", "good-1").returncode == 0
    wanted = sorted([f"item-{i}" for i in range(100)] + ["good-1"])
    wait_for(lambda: sorted(lines(out)) == wanted, 20, "every good item handled")
    wait_for(lambda: '"dead": 1' in goodsd(config, "status", "--json").stdout, 10, "one dead")
    assert "bad-1" in goodsd(config, "dead", "list").stdout
    assert goodsd(config, "dead", "requeue", "bad-1").returncode == 0
    wait_for(lambda: '"dead": 1' in goodsd(config, "status", "--json").stdout, 10, "dead again")
    assert goodsd(config, "dead", "purge", "--yes").returncode == 0
    wait_for(lambda: scrape(port).get('goodsd_queue_dead{queue="goods2"}') == 0, 10, "metrics")
    # Then nothing was refused on the way
    log = daemon.log()
    assert "NOPERM" not in log and "refuse" not in log and "Traceback" not in log, log
    assert daemon.stop() == 0
    assert r.acl_log() == [], r.acl_log()


@pytest.mark.parametrize("command", ["blmove", "evalsha", "hincrby", "multi"])
def test_check_redis_names_a_command_the_acl_refuses(
    command, r, redis_server, goodsd_user, tmp_path
):
    # Given the README's user without one of the commands goodsd needs
    rule = [arg for arg in readme_acl_rule("goods2") if arg != f"+{command}"]
    r.execute_command(*rule)
    config = write_config(tmp_path, user_url(redis_server), queue="goods2")
    # When goodsd checks Redis, then it names the command and exits 78
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 78
    assert f"may not run commands goodsd needs: {command.upper()}" in checked.stderr


def test_a_reload_to_a_user_the_acl_refuses_keeps_the_running_config(
    r, redis_server, goodsd_user, tmp_path, start_daemon, notify
):
    # Given goodsd running with the default user, and the README's user lacking BLMOVE
    r.execute_command(*[arg for arg in readme_acl_rule("q") if arg != "+blmove"])
    consumers = {"handler": "sample_handlers:record"}
    config = write_config(tmp_path, redis_server.url, consumers=consumers)
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    before = daemon.children()
    # When a reload switches goodsd to that user
    write_config(tmp_path, user_url(redis_server), consumers=consumers)
    ready = reload(daemon, notify)
    # Then the reload is refused, as a start would be, saying why
    assert (
        f"last reload failed: {config}: redis refuses commands goodsd needs" in (ready["STATUS"])
    ), ready
    assert "BLMOVE" in ready["STATUS"]
    # And the running config keeps serving, with the same children
    assert daemon.children() == before
    r.lpush("q", "after")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"after"], 10, "the item handled")


# The commands of the README's rule, as ACL names ("script|load").
README_COMMANDS = [arg[1:] for arg in readme_acl_rule("goods2") if arg.startswith("+")]
# Only read what the server says it is (the start's warnings, check --redis): not needed.
OPTIONAL = {"hello", "info"}
# Sent by redis-py as a connection opens (SELECT only for a database other than 0): without
# them no connection opens, a refusal that names the command.
ON_CONNECT = {"client|setname", "select"}


@pytest.mark.parametrize("command", README_COMMANDS)
def test_the_permission_check_misses_no_command_of_the_readme_rule(
    command, r, redis_server, goodsd_user
):
    # Given the README's user for a queue, without one of its commands
    r.execute_command(*[arg for arg in readme_acl_rule("goods2") if arg != f"+{command}"])
    url = user_url(redis_server) + ("?db=1" if command == "select" else "")
    client = connect(RedisConfig(url), "goodsd-test", queue="goods2")
    queue = Upkeep(client, "goods2")
    # When goodsd checks its permissions, then what it lacks is found
    try:
        if command in OPTIONAL:
            assert refused_commands(queue, waits=True) == []
        elif command in ON_CONNECT:
            with pytest.raises(redis.ResponseError) as raised:
                refused_commands(queue, waits=True)
            trouble = classify(raised.value)
            assert trouble is not None and trouble.kind is Kind.NO_PERMISSION
            assert f"'{command}'" in trouble.detail
        elif command == "wait":  # sent only with redis.wait_replicas
            assert refused_commands(queue) == []
            assert refused_commands(queue, waits=True) == ["WAIT"]
        else:
            assert refused_commands(queue, waits=True) == [command.upper().replace("|", " ")]
    finally:
        client.close()
    # And nothing ran
    assert r.dbsize() == 0


def test_the_permission_check_finds_nothing_missing_in_the_readme_rule(
    r, redis_server, goodsd_user
):
    r.execute_command(*readme_acl_rule("goods2"))
    client = connect(RedisConfig(user_url(redis_server)), "goodsd-test", queue="goods2")
    assert refused_commands(Upkeep(client, "goods2"), waits=True) == []
    client.close()
