"""The webhook address policy: what is refused and why, the allow list, resolution pinned to the
checked address, and the settings that configure it."""

from __future__ import annotations

import re
import socket

import pytest
from pydantic import ValidationError

from orchestrator.webhooks.settings import DEFAULT_RETRY_SCHEDULE_S, WebhookSettings
from orchestrator.webhooks.targets import (
    WebhookHostUnresolved,
    WebhookTargetRefused,
    check_webhook_target,
    resolve_webhook_target,
)


def _resolver(table: dict[str, list[str]]):
    """A name table in getaddrinfo's shape (names not in it fail like an unknown name)."""

    def resolve(host, port, family=0, type_=0, proto=0, flags=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in table[host]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if fam == socket.AF_INET6 else (address, port)
            out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    return resolve


NONE_ALLOWED = WebhookSettings(allow_hosts=())
PUBLIC = _resolver({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://192.168.1.20:8080/", "a private address"),
        ("http://172.16.5.5/", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://100.100.100.200/", "a cloud metadata address"),
        ("http://168.63.129.16/", "a cloud metadata address"),
        ("http://169.254.1.1/", "a link-local address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://127.0.0.1:9000/", "127.0.0.1 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "a loopback address (embedded in IPv6)"),
        ("http://[64:ff9b::a00:1]/", "a private address (embedded in IPv6)"),
        ("http://[2002:a9fe:a9fe::]/", "a cloud metadata address (embedded in IPv6)"),
        ("http://100.64.0.1/", "a carrier-grade NAT (shared) address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://[fc00::5]/", "a private address"),
        ("http://240.0.0.1/", "a reserved address"),
        ("http://192.0.2.10/", "a private address"),  # TEST-NET-1: documentation only
    ],
)
def test_non_public_addresses_are_refused_with_the_reason(url, reason):
    with pytest.raises(WebhookTargetRefused, match="webhook_url is refused") as info:
        check_webhook_target(url, NONE_ALLOWED)
    assert reason in str(info.value)
    assert "AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS" in str(info.value)


def test_host_names_are_judged_by_what_they_resolve_to():
    # localhost through the system resolver
    with pytest.raises(WebhookTargetRefused, match=r"loopback address \(host 'localhost' resolves to it\)"):
        check_webhook_target("http://localhost:8080/hook", NONE_ALLOWED)
    # a public-looking name that resolves to loopback (DNS rebinding's first half)
    evil = _resolver({"evil.example": ["127.0.0.1"]})
    with pytest.raises(WebhookTargetRefused, match=re.escape("127.0.0.1 is a loopback address")):
        resolve_webhook_target("https://evil.example/hook", NONE_ALLOWED, resolver=evil)
    # one bad address among good ones is enough to refuse
    mixed = _resolver({"mixed.example": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(WebhookTargetRefused, match=re.escape("10.1.2.3 is a private address")):
        resolve_webhook_target("https://mixed.example/", NONE_ALLOWED, resolver=mixed)
    # numeric spellings of loopback that the resolver understands are caught too
    for url in ("http://127.1/", "http://2130706433/", "http://0x7f000001/"):
        with pytest.raises(WebhookTargetRefused, match="loopback"):
            check_webhook_target(url, NONE_ALLOWED)


def test_a_public_target_is_pinned_to_the_checked_address():
    target = resolve_webhook_target("https://Hooks.Example.com./in?x=1&y=%20", NONE_ALLOWED, resolver=PUBLIC)
    assert target.address == "93.184.216.34"
    assert target.host == "hooks.example.com" and target.host_header == "hooks.example.com"
    assert target.server_name == "hooks.example.com"
    assert target.connect_url == "https://93.184.216.34:443/in?x=1&y=%20"
    v6 = resolve_webhook_target("http://[2606:4700::1111]:8443/", NONE_ALLOWED)
    assert v6.connect_url == "http://[2606:4700::1111]:8443/" and v6.host_header == "[2606:4700::1111]:8443"
    assert v6.server_name is None


def test_the_allow_list_opens_hosts_and_networks_but_metadata_only_by_name():
    settings = WebhookSettings(allow_hosts=("127.0.0.1", "hooks.internal", "10.0.0.0/8", "169.254.0.0/16"))
    check_webhook_target("http://127.0.0.1:8000/x", settings)
    check_webhook_target("http://10.20.30.40/x", settings)
    check_webhook_target("http://169.254.10.10/x", settings)
    internal = _resolver({"hooks.internal": ["192.168.7.7"], "other.internal": ["192.168.7.8"]})
    assert resolve_webhook_target("http://hooks.internal/", settings, resolver=internal).address == "192.168.7.7"
    with pytest.raises(WebhookTargetRefused, match=re.escape("192.168.7.8 is a private address")):
        resolve_webhook_target("http://other.internal/", settings, resolver=internal)
    # a network wide enough to hold the metadata address does not open it ...
    with pytest.raises(WebhookTargetRefused, match="cloud metadata"):
        check_webhook_target("http://169.254.169.254/", settings)
    # ... naming the address itself does
    check_webhook_target("http://169.254.169.254/", WebhookSettings(allow_hosts=("169.254.169.254",)))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "webhook_url is empty"),
        ("ftp://files.example.com/x", "expected an http:// or https:// URL"),
        ("hooks.example.com/x", "expected an http:// or https:// URL"),
        ("https://user:pw@hooks.example.com/", "must not carry credentials"),
        ("https://hooks.example.com/a b", "whitespace or control characters"),
        ("https://" + "a" * 2050 + ".com/", "at most 2048 allowed"),
        ("http:///path-only", "has no host"),
    ],
)
def test_malformed_urls_are_refused_with_a_clear_message(url, message):
    with pytest.raises(WebhookTargetRefused, match=message):
        resolve_webhook_target(url, NONE_ALLOWED, resolver=PUBLIC)


def test_a_name_that_does_not_resolve_is_refused_as_unresolved():
    with pytest.raises(WebhookHostUnresolved, match=re.escape("'nowhere.invalid' does not resolve")):
        resolve_webhook_target("https://nowhere.invalid/", NONE_ALLOWED, resolver=PUBLIC)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", " 127.0.0.1 , hooks.internal,10.0.0.0/8 ")
    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_RETRY_SCHEDULE_S", "1,2.5,60")
    settings = WebhookSettings.from_env()
    assert settings.allow_hosts == ("127.0.0.1", "hooks.internal", "10.0.0.0/8")
    assert settings.retry_schedule_s == (1.0, 2.5, 60.0) and settings.max_attempts == 4
    check_webhook_target("http://127.0.0.1:1/")  # the environment's settings are the default
    assert sum(DEFAULT_RETRY_SCHEDULE_S) / 3600 == pytest.approx(23.7, abs=0.1)  # retries span about a day


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allow_hosts": ("bad host!",)}, "webhook allow entry 'bad host!' is invalid"),
        ({"allow_hosts": ("10.0.0.0/33",)}, "is invalid"),
        ({"retry_schedule_s": (5, -1)}, "retry wait -1"),
        ({"timeout_s": 30, "delivery_lease_s": 40}, r"delivery_lease_s \(40.0\) must exceed"),
        ({"jitter": 1.5}, "less than or equal to 1"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        WebhookSettings(**kwargs)
