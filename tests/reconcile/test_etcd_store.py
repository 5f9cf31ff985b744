"""The etcd Store behind the Store Protocol, on a real 3-member etcd: the same behaviour as the
SQLite store (each test runs over both), fencing by etcd itself, fail-over between endpoints,
user/password auth, and the journal URL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
from etcd_cluster import ETCD, EtcdCluster, free_ports

from provision.errors import UsageError
from provision.reconcile.etcd.client import EtcdAuth, EtcdClient, EtcdError
from provision.reconcile.etcd.location import parse_etcd_location
from provision.reconcile.etcd.store import EtcdStore
from provision.reconcile.journal import (
    Intent,
    KnownInstance,
    LeaseHeldError,
    ProviderRecord,
    SqliteStore,
    Store,
)
from provision.reconcile.provider import StaleEpochError
from provision.reconcile.spec import parse_cluster_spec
from provision.reconcile.stores import open_store


@pytest.fixture(params=["sqlite", "etcd"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, Store]:
    """Two handles on one journal (two daemons)."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "j.db"), SqliteStore(tmp_path / "j.db")
    url = request.getfixturevalue("etcd_url")
    return EtcdStore(parse_etcd_location(url)), EtcdStore(parse_etcd_location(url))


def _intent(key: str, op: str = "create", instance: str | None = None) -> Intent:
    return Intent(
        key,
        "demo",
        "web",
        op,
        "00001",
        instance,
        "cfg",
        "missing",
        '{"k": 1}' if op == "create" else "",
        1.0,
    )


def test_a_journal_round_trip_of_every_record(stores: tuple[Store, Store]) -> None:
    a, b = stores
    epoch = a.acquire_lease("demo", "a", 15, 0.0)
    assert a.identity() == b.identity() and len(a.identity()) == 16
    a.put_desired("demo", "sha", "text", epoch)
    assert b.desired("demo") == ("sha", "text")
    a.put_config("cfg", "img", {"flavor": "small"})
    assert b.config("cfg") == ("img", {"flavor": "small"}) and b.config("nope") is None
    assert [a.next_sequence("demo", "web", epoch) for _ in range(3)] == [1, 2, 3]
    a.begin_intents(
        [_intent("demo/web/00001/1"), _intent("demo/web/destroy/i-9/1", "destroy", "i-9")], epoch
    )
    assert [i.key for i in b.pending_intents("demo", "web")] == [
        "demo/web/00001/1",
        "demo/web/destroy/i-9/1",
    ]
    assert b.pending_intents("demo", "db") == [] and len(b.pending_intents("demo")) == 2
    known = KnownInstance(
        "i-1", "web", "00001", "cfg", "img", "demo-web-00001", "demo/web/00001/1", 5.0, None
    )
    a.finish_create("demo/web/00001/1", known, epoch)
    a.finish_destroy("demo/web/destroy/i-9/1", "i-9", 7.0, epoch)
    assert b.pending_intents("demo") == []
    by_id = {k.instance_id: k for k in b.known_instances("demo", "web")}
    assert by_id["i-1"] == known and by_id["i-9"].destroyed_at == 7.0
    assert b.birth_times("demo", "web") == {"i-1": 5.0}
    a.begin_intents([_intent("demo/web/00002/4")], epoch)
    a.abandon_intent("demo/web/00002/4", "quota", epoch)
    assert b.pending_intents("demo") == []
    a.set_unhealthy_since("demo", "web", {"i-1": 3.0, "i-2": 4.0})
    a.set_unhealthy_since("demo", "web", {"i-2": None})
    assert b.unhealthy_since("demo", "web") == {"i-1": 3.0}
    a.forget_instances("demo", ["i-9"])
    assert [k.instance_id for k in b.known_instances("demo", "web")] == ["i-1"]
    record = ProviderRecord("sim", "simulated", 2.5, {"url": "http://x"}, "/base")
    a.record_cluster("demo", {"web": "sim", "db": "sim"}, [record], epoch)
    assert b.groups_seen("demo") == {"web": "sim", "db": "sim"} and b.providers_seen("demo") == [
        record
    ]
    assert b.groups_with_intents("demo") == {"web"}
    a.retire_group("demo", "db", epoch)
    assert b.groups_seen("demo") == {"web": "sim"}
    a.adopt_journals("demo", ["0123456789abcdef"], epoch)
    assert b.adopted_journals("demo") == {"0123456789abcdef"}


def test_the_lease_is_exclusive_and_a_stale_epoch_is_refused(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first = a.acquire_lease("demo", "a", 3, 0.0)
    with pytest.raises(LeaseHeldError):
        b.acquire_lease("demo", "b", 3, 1.0)
    a.release_lease("demo", "a", first)
    second = b.acquire_lease("demo", "b", 3, 2.0)
    assert second > first
    with pytest.raises(StaleEpochError):
        a.put_desired("demo", "sha", "stale", first)
    with pytest.raises(StaleEpochError):
        a.begin_intents([_intent("demo/web/00001/1")], first)
    b.renew_lease("demo", "b", second, 3, 3.0)
    assert b.pending_intents("demo") == [] and b.desired("demo") is None


def test_an_expired_etcd_lease_fences_its_holder_without_any_clock_of_ours(etcd_url: str) -> None:
    a, b = EtcdStore(parse_etcd_location(etcd_url)), EtcdStore(parse_etcd_location(etcd_url))
    epoch = a.acquire_lease("demo", "a", 2, 0.0)  # never renewed
    deadline = time.monotonic() + 6
    while True:
        try:
            b.acquire_lease("demo", "b", 2, 0.0)
            break
        except LeaseHeldError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with pytest.raises(StaleEpochError):  # refused by etcd's compare, not by a's own bookkeeping
        a.put_desired("demo", "sha", "stale", epoch)
    with pytest.raises(StaleEpochError):
        a.renew_lease("demo", "a", epoch, 2, 0.0)


def test_requests_fail_over_to_the_members_that_answer(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    dead = free_ports(1)[0]
    client = EtcdClient([f"127.0.0.1:{dead}", *etcd_cluster.endpoints])
    started = time.monotonic()
    client.put("failover/x", "1")
    assert client.get("failover/x") is not None and client.get("failover/x").value == "1"  # type: ignore[union-attr]
    assert time.monotonic() - started < 2


def test_user_and_password_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_port, peer_port = free_ports(2)
    process = subprocess.Popen(
        [
            ETCD,
            "--name",
            "auth",
            "--data-dir",
            str(tmp_path / "d"),
            "--logger=zap",
            "--log-level=error",
            "--listen-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"auth=http://127.0.0.1:{peer_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{client_port}/v3"
        # healthy first (a leader), then the one user/add: retrying it after a client time-out
        # that the server had in fact served answers 412 "user name already exists" forever
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{client_port}/health", timeout=2)
                if health.status_code == 200 and health.json().get("health") == "true":
                    break
            except (requests.RequestException, ValueError):
                pass
            assert time.monotonic() < deadline, "etcd never became healthy"
            time.sleep(0.1)
        requests.post(
            f"{base}/auth/user/add", json={"name": "root", "password": "rootpw"}, timeout=10
        ).raise_for_status()
        requests.post(
            f"{base}/auth/user/grant", json={"user": "root", "role": "root"}, timeout=2
        ).raise_for_status()
        requests.post(f"{base}/auth/enable", json={}, timeout=2).raise_for_status()
        url = f"etcd://127.0.0.1:{client_port}/secured?user=root"
        with pytest.raises(Exception, match="authentication as 'root' failed"):
            monkeypatch.setenv("PROVISION_ETCD_PASSWORD", "wrong")
            EtcdStore(parse_etcd_location(url))
        monkeypatch.setenv("PROVISION_ETCD_PASSWORD", "rootpw")
        store = EtcdStore(parse_etcd_location(url))
        epoch = store.acquire_lease("demo", "a", 5, 0.0)
        store.put_desired("demo", "sha", "text", epoch)
        assert store.desired("demo") == ("sha", "text")
        assert "rootpw" not in repr(store.location) and "rootpw" not in store.describe()
        anonymous = requests.post(f"{base}/kv/range", json={"key": "c2VjdXJlZA=="}, timeout=2)
        assert anonymous.status_code >= 400  # auth really is on
    finally:
        process.kill()
        process.wait()


def test_journal_urls_are_checked(tmp_path: Path) -> None:
    location = parse_etcd_location("etcd://10.0.0.1:2379,10.0.0.2:2379/prod/journal")
    assert (
        location.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
        and location.prefix == "prod/journal"
    )
    for bad, message in [
        ("etcd://10.0.0.1:2379", "prefix is required"),
        ("etcd://10.0.0.1/p", "not HOST:PORT"),
        ("etcd://u:pw@10.0.0.1:2379/p", "no user or password in the URL"),
        ("etcd://10.0.0.1:2379/p?bogus=1", "unknown option 'bogus'"),
        ("etcd://10.0.0.1:2379/p?cert=c.pem", "needs both cert= and key="),
        ("etcd://10.0.0.1:2379/p?ca=missing.pem", "ca file"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_etcd_location(bad, tmp_path)
    (tmp_path / "ca.pem").write_text("x")
    assert parse_etcd_location("etcd://h:1/p?ca=ca.pem", tmp_path).auth == EtcdAuth(
        ca_file=str(tmp_path / "ca.pem")
    )
    text = "cluster: demo\njournal: etcd://h:1\ngroups: []\n"
    with pytest.raises(Exception, match=r"x.yml:2:\d+: journal: .*prefix is required"):
        parse_cluster_spec(text, str(tmp_path / "x.yml"))


def test_the_spec_or_journal_flag_selects_the_store(etcd_url: str, tmp_path: Path) -> None:
    spec = parse_cluster_spec(
        f"cluster: demo\njournal: {etcd_url}\nproviders: {{sim: {{type: simulated}}}}\ngroups: [{{name: web, provider: sim, image: img-1, size: 1}}]\n",
        "<t>",
    )
    store = open_store(spec)
    assert isinstance(store, EtcdStore) and store.describe() == etcd_url
    assert isinstance(open_store(spec, str(tmp_path / "j.db")), SqliteStore)


def _certificates(tmp: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl). The server's
    serves client auth too: etcd's JSON gateway dials the member's own gRPC port with it."""

    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=tmp, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (tmp / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "req", *key, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    _certificates(tmp_path)
    client_port, peer_port = free_ports(2)
    process = subprocess.Popen(
        [
            ETCD,
            "--name",
            "tls",
            "--data-dir",
            str(tmp_path / "d"),
            "--logger=zap",
            "--log-level=error",
            "--listen-client-urls",
            f"https://127.0.0.1:{client_port}",
            "--advertise-client-urls",
            f"https://127.0.0.1:{client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"tls=http://127.0.0.1:{peer_port}",
            "--cert-file",
            str(tmp_path / "server.pem"),
            "--key-file",
            str(tmp_path / "server-key.pem"),
            "--trusted-ca-file",
            str(tmp_path / "ca.pem"),
            "--client-cert-auth",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"etcd://127.0.0.1:{client_port}/tls?ca=ca.pem&cert=client.pem&key=client-key.pem"
        deadline = time.monotonic() + 15
        while True:
            try:
                store = EtcdStore(parse_etcd_location(url, tmp_path))
                break
            except Exception:
                assert time.monotonic() < deadline, "the TLS etcd never answered"
                time.sleep(0.2)
        epoch = store.acquire_lease("demo", "a", 5, 0.0)
        store.put_desired("demo", "sha", "text", epoch)
        assert store.desired("demo") == ("sha", "text")
        with pytest.raises(
            EtcdError, match="no etcd endpoint answered"
        ):  # no client certificate: the handshake fails
            EtcdStore(
                parse_etcd_location(f"etcd://127.0.0.1:{client_port}/tls?ca=ca.pem", tmp_path)
            )
    finally:
        process.kill()
        process.wait()
