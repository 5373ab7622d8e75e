"""Event integrity, pure part: the original producers' hash and signature, keys and settings.

The vectors come from independent implementations in Node.js: ``integrity-vectors.jsonl`` (the
reference's) and ``integrity-vectors-node.jsonl`` (300 seeded random events with awkward
strings, missing and falsy fields, odd values; ``make_integrity_vectors.js`` regenerates it).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from rayworker.errors import ConfigError
from rayworker.events import decode_lines
from rayworker.integrity import (
    CRITICAL_FIELDS,
    IntegrityConfig,
    IntegrityMonitor,
    Policy,
    Verdict,
    _HmacKey,  # the hot path's HMAC, checked below
    canonical_string,
    event_hash,
    sign,
    verify,
)
from rayworker.settings import load_settings

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "integrity-vectors.jsonl"
NODE = DATA / "integrity-vectors-node.jsonl"


def _vectors(path: Path) -> list[dict[str, Any]]:
    # msgspec, as the pipeline decodes events (strings exactly as sent).
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line]


ALL_VECTORS = _vectors(REFERENCE) + _vectors(NODE)


def _signed(vector: dict[str, Any]) -> dict[str, Any]:
    return {**vector["event"], "hash": vector["hash"], "signature": vector["signature"]}


def test_reference_vectors_are_all_there() -> None:
    """The reference's three vectors and the 300 Node.js vectors are loaded."""
    assert len(_vectors(REFERENCE)) == 3
    assert len(_vectors(NODE)) == 300


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=lambda v: v["hash"][:10])
def test_vector_canonical_hash_and_signature(vector: dict[str, Any]) -> None:
    """Canonical string, hash and HMAC signature equal the independent implementation's."""
    assert canonical_string(vector["event"]) == vector["canonical"]
    assert event_hash(vector["event"]) == vector["hash"]
    assert sign(vector["hash"], vector["hmac_key"]) == vector["signature"]
    assert verify(_signed(vector), vector["hmac_key"]) is Verdict.VALID


@pytest.mark.parametrize("name", CRITICAL_FIELDS)
def test_changing_any_critical_field_breaks_the_hash(name: str) -> None:
    """A changed critical field makes the hash mismatch, in every reference vector."""
    for vector in _vectors(REFERENCE):
        event = _signed(vector)
        event[name] = str(event.get(name) or "") + "x"
        assert verify(event, vector["hmac_key"]) is Verdict.HASH_MISMATCH


def test_rehashed_tampering_is_caught_by_the_signature() -> None:
    """A tamperer who recomputes the hash cannot recompute the signature without the key."""
    vector = _vectors(REFERENCE)[0]
    event = {**vector["event"], "status": "success"}
    event["hash"] = event_hash(event)
    event["signature"] = vector["signature"]
    assert verify(event, vector["hmac_key"]) is Verdict.SIGNATURE_MISMATCH
    event["signature"] = sign(event["hash"], "a-guessed-key")
    assert verify(event, vector["hmac_key"]) is Verdict.SIGNATURE_MISMATCH


def test_same_instant_written_differently_is_another_hash() -> None:
    """The timestamp is hashed as the string received: the same instant, reformatted, fails."""
    vector = _vectors(REFERENCE)[0]
    assert vector["event"]["timestamp"] == "2026-03-10T10:00:00.000Z"
    for other in ("2026-03-10T10:00:00Z", "2026-03-10T11:00:00+01:00", "2026-03-10T10:00:00"):
        event = {**_signed(vector), "timestamp": other}
        first = decode_lines([json.dumps(vector["event"]).encode()]).batch.ts[0]
        again = decode_lines([json.dumps(event).encode()]).batch.ts[0]
        assert first == again  # the same instant to the detector...
        assert verify(event, vector["hmac_key"]) is Verdict.HASH_MISMATCH  # ...not to the hash


def test_another_key_never_verifies() -> None:
    """A signature made with one key fails under any other key."""
    for vector in ALL_VECTORS[:20]:
        for key in ("test-key2", "Test-key", "", "test-key "):
            if key:
                assert verify(_signed(vector), key) is Verdict.SIGNATURE_MISMATCH


def test_fields_outside_the_critical_set_are_not_covered() -> None:
    """Like the original, only the eight critical fields are signed (session data is not)."""
    vector = _vectors(REFERENCE)[0]
    event = {**_signed(vector), "sessionContext": {"ipAddress": "6.6.6.6"}, "recordCount": 9}
    assert verify(event, vector["hmac_key"]) is Verdict.VALID


def test_empty_and_missing_fields_hash_as_null() -> None:
    """JavaScript ``||``: a missing field, ``""``, ``0`` and ``false`` all become ``null``."""
    base = {"timestamp": "2026-03-10T10:00:00Z", "action": "a", "status": "success"}
    expected = canonical_string(base)
    for value in ("", 0, False, None, 0.0):
        assert canonical_string({**base, "principalId": value}) == expected
    assert "principalId:null" in expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e16, "10000000000000000"),
        (123.456, "123.456"),
        (0.000001, "0.000001"),
        (-0.5, "-0.5"),
        (2**60, "1152921504606847000"),
        (1.5e-10, "1.5e-10"),
        (True, "true"),
        ([1, "é"], '[1,"é"]'),
        ({"b": 1, "a": None}, '{"b":1,"a":null}'),
    ],
)
def test_non_string_values_are_written_as_javascript_does(value: Any, text: str) -> None:
    """Non-string values are written like ``JSON.stringify`` (numbers like Number#toString)."""
    canonical = canonical_string({"timestamp": "t", "action": value})
    assert canonical.startswith(f"action:{text}|")


def test_unsigned_and_kms_signed_events() -> None:
    """No proofs is UNSIGNED; a KMS signature is not checked with an HMAC key (hash still is)."""
    vector = _vectors(REFERENCE)[0]
    assert verify(vector["event"], "test-key") is Verdict.UNSIGNED
    kms = {**_signed(vector), "signature": "c2ln", "algorithm": "RSASSA_PSS_SHA_256"}
    assert verify(kms, "test-key") is Verdict.VALID
    kms["action"] = "changed"
    assert verify(kms, "test-key") is Verdict.HASH_MISMATCH


def test_signature_without_a_key_is_not_checked() -> None:
    """With no key for the tenant only the hash can be checked."""
    vector = _vectors(REFERENCE)[1]
    event = {**_signed(vector), "signature": "0" * 64}
    assert verify(event, None) is Verdict.VALID
    assert verify(event, "test-key") is Verdict.SIGNATURE_MISMATCH


def test_non_string_proofs_are_mismatches() -> None:
    """A hash or signature that is not a string never matches."""
    vector = _vectors(REFERENCE)[0]
    assert verify({**_signed(vector), "hash": 5}, "test-key") is Verdict.HASH_MISMATCH
    bad_signature = {**_signed(vector), "signature": ["x"]}
    assert verify(bad_signature, "test-key") is Verdict.SIGNATURE_MISMATCH


# --- configuration ---------------------------------------------------------------------------


def test_config_repr_never_shows_keys() -> None:
    """The pure config names the tenants with keys, never the keys."""
    config = IntegrityConfig(
        Policy.VERIFY_IF_PRESENT, {"acme": Policy.REQUIRE}, {"acme": b"super-secret-1"}
    )
    assert "super-secret-1" not in repr(config)
    assert "acme" in repr(config)
    assert config.policy("acme") is Policy.REQUIRE
    assert config.policy("other") is Policy.VERIFY_IF_PRESENT
    assert config.enabled
    assert not IntegrityConfig().enabled


def test_require_without_a_key_is_a_config_error() -> None:
    """A tenant that requires signatures but has no key fails at start-up, naming the fix."""
    with pytest.raises(ConfigError, match=r"integrity\.keys\.acme"):
        IntegrityConfig(policies={"acme": Policy.REQUIRE})


def test_settings_keys_from_environment_and_file_are_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys from the environment and a keys file reach the config and never a printout."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("Org-B: file-secret-222\n", encoding="utf-8")
    monkeypatch.setenv(
        "RAYWORKER_INTEGRITY",
        json.dumps(
            {
                "policy": "verify-if-present",
                "tenants": {"org-a": "require", "Org-B": "off"},
                "keys": {"org-a": "env-secret-111"},
                "keys_file": str(keys_file),
            }
        ),
    )
    settings = load_settings()
    config = settings.integrity.config()
    assert config.key("org-a") == b"env-secret-111"
    assert config.key("Org-B") == b"file-secret-222"
    assert config.policy("Org-B") is Policy.OFF
    printed = " ".join([repr(settings), str(settings), json.dumps(settings.public()), repr(config)])
    for secret in ("env-secret-111", "file-secret-222"):
        assert secret not in printed


def test_settings_errors_name_the_field_and_hide_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad integrity setting fails at start-up naming it; the message holds no key."""
    monkeypatch.setenv("RAYWORKER_INTEGRITY__TENANTS", '{"acme": "require"}')
    with pytest.raises(ConfigError, match=r"integrity\.keys\.acme.*RAYWORKER_INTEGRITY"):
        load_settings()
    monkeypatch.setenv("RAYWORKER_INTEGRITY__TENANTS", '{"acme": "sometimes"}')
    with pytest.raises(ConfigError, match="integrity"):
        load_settings()
    monkeypatch.delenv("RAYWORKER_INTEGRITY__TENANTS")
    broken = tmp_path / "keys.yaml"
    broken.write_text("acme: [unclosed-secret-333\n", encoding="utf-8")
    monkeypatch.setenv("RAYWORKER_INTEGRITY__KEYS_FILE", str(broken))
    with pytest.raises(ConfigError, match="keys file") as caught:
        load_settings()
    assert "unclosed-secret-333" not in str(caught.value)


def test_conflicting_keys_for_one_tenant_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tenant with two different keys (settings and file) is ambiguous: refused."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"acme": "one-key"}', encoding="utf-8")
    monkeypatch.setenv(
        "RAYWORKER_INTEGRITY",
        json.dumps({"keys": {"acme": "another-key"}, "keys_file": str(keys_file)}),
    )
    with pytest.raises(ConfigError, match="acme") as caught:
        load_settings()
    assert "one-key" not in str(caught.value)
    assert "another-key" not in str(caught.value)


@pytest.mark.parametrize("length", [0, 1, 8, 31, 63, 64, 65, 128, 200])
def test_prepared_hmac_equals_the_standard_library(length: int) -> None:
    """The hot path's HMAC with prepared key blocks equals ``hmac.digest`` for any key length."""
    key = bytes((7 * i + length) % 256 for i in range(length))
    mac = _HmacKey(key)
    for message in (b"", b"abc", bytes(range(256)) * 3):
        expected = hmac.digest(key, message, "sha256").hex().encode()
        assert mac.hexdigest(message) == expected


def test_vectors_verify_through_the_pipeline_decoder() -> None:
    """Every vector event the decoder accepts verifies in the hot path; tampered, it fails."""
    accepted = 0
    for vector in ALL_VECTORS:
        tenant = vector["event"].get("organizationId")
        if not isinstance(tenant, str) or not tenant:
            continue
        line = msgspec.json.encode(_signed(vector))
        tampered = msgspec.json.encode({**_signed(vector), "principalId": "mallory"})
        decoded = decode_lines([line, tampered])
        if len(decoded.batch) != 2:
            continue  # the schema refuses it (e.g. an odd action): never verified
        accepted += 1
        config = IntegrityConfig(Policy.REQUIRE, {}, {tenant: vector["hmac_key"].encode()})
        monitor = IntegrityMonitor(config, suppression_s=300.0, evidence_cap=100)
        ok = np.ones(2, dtype=np.bool_)
        check = monitor.check(decoded.batch, ok, 0)
        assert not check.rejections
        assert check.violations == [(1, Verdict.HASH_MISMATCH)]
    assert accepted >= 30


def test_integrity_module_is_pure() -> None:
    """rayworker.integrity imports no infrastructure (it runs in the router and in replay)."""
    import ast  # noqa: PLC0415 - only this test parses source

    import rayworker.integrity as module  # noqa: PLC0415

    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots & {"ray", "redis", "asyncpg", "httpx"} == set()
