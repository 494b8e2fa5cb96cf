"""CancelKeys: the keys a proxy instance hands out, and where each one cancels."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pgwire as pw
from pgwire.proxy import MAX_INSTANCE_ID, CancelKeys, CancelRoute, UpstreamKey, _cancel, instance_of

SERVER = ("127.0.0.1", 5432)
PEER = ("127.0.0.1", 6003)


def upstream_key(process_id: int = 777, secret: bytes = b"\x01\x02\x03\x04") -> UpstreamKey:
    return UpstreamKey(SERVER, process_id, secret)


def request(process_id: int, secret: bytes) -> pw.CancelRequest:
    return pw.CancelRequest(process_id=process_id, secret_key=secret)


@given(instance_id=st.integers(0, MAX_INSTANCE_ID))
def test_process_ids_carry_the_instance_and_stay_positive(instance_id: int) -> None:
    keys = CancelKeys(instance_id)
    for _ in range(20):
        process_id, _secret = keys.issue(pw.PROTOCOL_3_0)
        assert instance_of(process_id) == instance_id
        assert 0 < process_id < 2**31
    assert len(keys) == 20


def test_issued_keys_are_unique_and_sized_by_protocol_version() -> None:
    keys = CancelKeys(3)
    issued = [keys.issue(pw.PROTOCOL_3_0) for _ in range(500)]
    issued += [keys.issue(pw.PROTOCOL_3_2) for _ in range(500)]
    assert len({process_id for process_id, _ in issued}) == 1000
    assert {len(secret) for _, secret in issued[:500]} == {4}
    assert {len(secret) for _, secret in issued[500:]} == {32}
    assert len({secret for _, secret in issued[500:]}) == 500


def test_the_counter_wraps_without_issuing_process_id_zero() -> None:
    keys = CancelKeys(0)
    keys._counter = _cancel._COUNTER_MASK   # the next one would be 0
    process_id, _ = keys.issue(pw.PROTOCOL_3_0)
    assert process_id == 1


def test_the_counter_skips_ids_still_in_use() -> None:
    keys = CancelKeys(0)
    first, _ = keys.issue(pw.PROTOCOL_3_0)
    keys._counter = first - 1               # as if it had wrapped all the way round
    second, _ = keys.issue(pw.PROTOCOL_3_0)
    assert second == first + 1


@pytest.mark.parametrize("bad", [-1, MAX_INSTANCE_ID + 1])
def test_instance_ids_must_fit_in_seven_bits(bad: int) -> None:
    with pytest.raises(ValueError, match="instance_id"):
        CancelKeys(bad)
    with pytest.raises(ValueError, match="peer"):
        CancelKeys(0, {bad: PEER})


def test_an_instance_cannot_be_its_own_peer() -> None:
    with pytest.raises(ValueError, match="cannot be a peer"):
        CancelKeys(4, {4: PEER})


def test_the_right_key_routes_to_the_server_with_the_servers_key() -> None:
    keys = CancelKeys(0)
    process_id, secret = keys.issue(pw.PROTOCOL_3_2)
    keys.bind(process_id, upstream_key())
    route = keys.route(request(process_id, secret))
    assert route == CancelRoute(SERVER, request(777, b"\x01\x02\x03\x04"), forwarded=False)


def test_a_key_follows_the_server_connection_it_is_bound_to() -> None:
    keys = CancelKeys(0)
    process_id, secret = keys.issue(pw.PROTOCOL_3_0)
    keys.bind(process_id, upstream_key(1))
    keys.bind(process_id, upstream_key(2, b"\x09\x09\x09\x09"))
    route = keys.route(request(process_id, secret))
    assert route is not None and route.request == request(2, b"\x09\x09\x09\x09")
    keys.bind(process_id, None)                  # between server connections
    assert keys.route(request(process_id, secret)) is None


def test_a_key_issued_but_not_yet_bound_cancels_nothing() -> None:
    keys = CancelKeys(0)
    process_id, secret = keys.issue(pw.PROTOCOL_3_0)
    assert keys.route(request(process_id, secret)) is None


def test_a_released_key_cancels_nothing_and_is_forgotten() -> None:
    keys = CancelKeys(0)
    process_id, secret = keys.issue(pw.PROTOCOL_3_0)
    keys.bind(process_id, upstream_key())
    keys.release(process_id)
    keys.release(process_id)                     # twice is harmless
    assert len(keys) == 0
    assert keys.route(request(process_id, secret)) is None
    with pytest.raises(KeyError):
        keys.bind(process_id, upstream_key())


def wrong_secrets(secret: bytes) -> list[bytes]:
    return [
        bytes([secret[0] ^ 0x80]) + secret[1:],   # first byte
        secret[:-1] + bytes([secret[-1] ^ 1]),    # last byte
        secret[:4] if len(secret) > 4 else secret + b"\x00" * 28,  # other length
        bytes(len(secret)),                       # all zeros
    ]


@pytest.mark.parametrize("protocol_version", [pw.PROTOCOL_3_0, pw.PROTOCOL_3_2])
def test_a_wrong_secret_cancels_nothing(protocol_version: int) -> None:
    keys = CancelKeys(0)
    process_id, secret = keys.issue(protocol_version)
    keys.bind(process_id, upstream_key())
    for wrong in wrong_secrets(secret):
        assert wrong != secret
        assert keys.route(request(process_id, wrong)) is None
    assert keys.route(request(process_id, secret)) is not None


def test_unknown_process_ids_cancel_nothing_whatever_the_secret() -> None:
    keys = CancelKeys(0)
    process_id, _ = keys.issue(pw.PROTOCOL_3_2)
    keys.bind(process_id, upstream_key())
    unknown = process_id + 1
    # The all-zero secret is what unknown ids are compared against; it still fails.
    for secret in (bytes(32), bytes(4), b"\xff" * 32):
        assert keys.route(request(unknown, secret)) is None


def test_secrets_are_compared_with_hmac_compare_digest_known_id_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_cancel.hmac, "compare_digest", spy)
    keys = CancelKeys(0)
    process_id, secret = keys.issue(pw.PROTOCOL_3_0)
    keys.bind(process_id, upstream_key())
    keys.route(request(process_id, secret))
    keys.route(request(process_id, b"nope"))
    keys.route(request(process_id + 1, b"nope"))        # unknown id: compared all the same
    assert [b for _, b in compared] == [secret, b"nope", b"nope"]
    assert compared[0][0] == secret


def test_keys_of_a_peer_are_forwarded_untouched_and_others_dropped() -> None:
    keys = CancelKeys(1, {2: PEER})
    peer_request = request((2 << 24) | 55, bytes(range(32)))
    assert keys.route(peer_request) == CancelRoute(PEER, peer_request, forwarded=True)
    assert keys.route(request((3 << 24) | 55, b"abcd")) is None


@given(process_id=st.integers(0, 2**31 - 1))
def test_instance_of_reads_bits_24_to_30(process_id: int) -> None:
    assert instance_of(process_id) == process_id >> 24
