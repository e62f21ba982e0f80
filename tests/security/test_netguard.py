"""SSRF guard: every non-public range refused unless allow-listed, checked per resolution."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.netguard import check_outbound_url


def fixed(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8001/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local/metadata"),
        ("http://[fd00:ec2::254]/", "link-local/metadata"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://100.64.1.1/", "CGNAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[fe80::1]/", "link-local"),
    ],
)
def test_non_public_literals_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_outbound_url(url, [])
    assert exc.value.param == "url" and exc.value.code == "url_not_allowed"
    assert reason in exc.value.message


def test_public_address_accepted_and_names_resolved() -> None:
    check_outbound_url("https://93.184.216.34/hook", [])
    check_outbound_url("https://hooks.example.com/x", [], resolver=fixed("93.184.216.34"))


def test_name_resolving_to_metadata_refused_param_named() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_outbound_url(
            "http://evil.example/x", [], param="callback_url", resolver=fixed("169.254.169.254")
        )
    assert exc.value.param == "callback_url"
    assert "169.254.169.254" in exc.value.message


def test_one_private_answer_among_public_ones_refuses() -> None:
    with pytest.raises(InvalidRequest):
        check_outbound_url("http://mixed.example/", [], resolver=fixed("93.184.216.34", "10.0.0.1"))


def test_allow_list_by_host_address_and_cidr() -> None:
    check_outbound_url("http://127.0.0.1:9/x", ["127.0.0.1"])
    check_outbound_url("http://10.2.3.4/x", ["10.0.0.0/8"])
    check_outbound_url(
        "http://receiver.internal/x", ["receiver.internal"], resolver=fixed("10.9.9.9")
    )
    check_outbound_url("http://r.internal/x", ["10.9.0.0/16"], resolver=fixed("10.9.9.9"))
    with pytest.raises(InvalidRequest):
        check_outbound_url("http://10.2.3.4/x", ["10.3.0.0/16", "other.internal"])


def test_dns_rebinding_caught_on_recheck() -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    resolver = lambda host, port: next(answers)  # noqa: E731
    check_outbound_url("http://rebind.example/x", [], resolver=resolver)  # registration
    with pytest.raises(InvalidRequest):  # delivery time: the name now points inside
        check_outbound_url("http://rebind.example/x", [], resolver=resolver)


@pytest.mark.parametrize("url", ["ftp://x/", "http:///nohost", "http://[::1/", "http://h:99999/"])
def test_malformed_urls_are_400_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_outbound_url(url, [])
    assert exc.value.param == "url"


def test_unresolvable_name_is_400() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(InvalidRequest) as exc:
        check_outbound_url("http://nope.invalid/", [], resolver=fail)
    assert exc.value.code == "url_unresolvable"
