"""The field cipher: sealed values, key rotation, the blind index and key configuration."""

from __future__ import annotations

import base64
import copy

import pytest

from careloop.adapters.field_crypto import (
    PREFIX,
    FieldCipher,
    SealedValueError,
    build_cipher,
    decode_key,
    generate_key,
    key_ids_in,
    parse_keyring,
    sealed_key_id,
)
from careloop.adapters.patient_matching import FuzzyPatientMatcher
from careloop.config import Settings
from careloop.domain.matching import PatientKey

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
INDEX = bytes(range(64, 96))
PATH = "patient.member_id"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _payload() -> dict[str, object]:
    return {
        "patient": {"family_name": "Okafor", "mrn": "MRN100234", "member_id": "M55501234"},
        "payer": {"name": "Blue Harbor Health", "member_id": "P1234567"},
        "clinic": "riverside-clinic",
    }


def test_a_sealed_value_opens_to_the_plaintext_and_does_not_show_it() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    sealed = cipher.seal("M55501234", PATH)
    assert sealed.startswith(f"{PREFIX}k1:")
    assert "M55501234" not in sealed
    assert cipher.open(sealed, PATH) == "M55501234"


def test_each_sealing_uses_a_fresh_nonce() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    assert cipher.seal("M55501234", PATH) != cipher.seal("M55501234", PATH)


def test_a_value_moved_to_another_field_does_not_open() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    sealed = cipher.seal("M55501234", "patient.member_id")
    with pytest.raises(SealedValueError, match="altered or belongs to another field"):
        cipher.open(sealed, "payer.member_id")


def test_a_tampered_value_does_not_open() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    sealed = cipher.seal("M55501234", PATH)
    body = bytearray(base64.urlsafe_b64decode(sealed.rsplit(":", 1)[1] + "=="))
    body[-1] ^= 0x01
    tampered = f"{PREFIX}k1:" + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    with pytest.raises(SealedValueError, match="altered"):
        cipher.open(tampered, PATH)
    with pytest.raises(SealedValueError, match="malformed"):
        cipher.open(f"{PREFIX}k1:AAAA", PATH)


def test_a_value_relabelled_with_another_key_id_does_not_open() -> None:
    cipher = FieldCipher([("k2", K2), ("k1", K1)], INDEX)
    sealed = FieldCipher([("k1", K1)], INDEX).seal("M55501234", PATH)
    with pytest.raises(SealedValueError, match="'k2'"):
        cipher.open(sealed.replace(":k1:", ":k2:"), PATH)


def test_an_unknown_key_id_is_named_in_the_error() -> None:
    sealed = FieldCipher([("k0", K2)], INDEX).seal("M55501234", PATH)
    cipher = FieldCipher([("k1", K1)], INDEX)
    with pytest.raises(SealedValueError, match="key 'k0', which is not in CARELOOP_FIELD_KEYS"):
        cipher.open(sealed, PATH)


def test_the_first_key_seals_and_every_listed_key_opens() -> None:
    old = FieldCipher([("k1", K1)], INDEX)
    rotated = FieldCipher([("k2", K2), ("k1", K1)], INDEX)
    from_old_key = old.seal("M55501234", PATH)
    assert rotated.open(from_old_key, PATH) == "M55501234"
    assert sealed_key_id(rotated.seal("M55501234", PATH)) == "k2"


def test_reseal_moves_old_key_and_plaintext_values_to_the_active_key() -> None:
    old = FieldCipher([("k1", K1)], INDEX)
    rotated = FieldCipher([("k2", K2), ("k1", K1)], INDEX)
    stored = old.seal_data(_payload())
    stored["payer"]["member_id"] = "P1234567"  # written before encryption was on
    assert key_ids_in(stored) == ["k1", ""]
    resealed = rotated.reseal_data(stored)
    assert resealed is not None
    assert key_ids_in(resealed) == ["k2", "k2"]
    assert rotated.open_data(resealed) == _payload()
    assert rotated.reseal_data(resealed) is None


def test_sealing_a_payload_leaves_the_callers_payload_and_other_fields_alone() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    payload = _payload()
    original = copy.deepcopy(payload)
    stored = cipher.seal_data(payload)
    assert payload == original
    assert stored["patient"]["mrn"] == "MRN100234"
    assert stored["payer"]["name"] == "Blue Harbor Health"
    assert "M55501234" not in str(stored) and "P1234567" not in str(stored)
    assert cipher.open_data(stored) == original


def test_a_payload_without_the_fields_is_unchanged() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    payload = {"patient": {"family_name": "Okafor"}, "clinic": "riverside-clinic"}
    assert cipher.seal_data(payload) == payload
    assert cipher.reseal_data(payload) is None


def test_the_blind_index_is_stable_across_keys_and_spellings_and_hides_the_value() -> None:
    one = FieldCipher([("k1", K1)], INDEX)
    rotated = FieldCipher([("k2", K2), ("k1", K1)], INDEX)
    token = one.blind_index("M55501234")
    assert token == rotated.blind_index("m-555 01234")
    assert token.startswith("bi1") and "55501234" not in token
    assert token != one.blind_index("M55501235")
    assert token != FieldCipher([("k1", K1)], K2).blind_index("M55501234")
    assert one.blind_index(" - ") == ""


def test_member_id_blocking_key_holds_the_token_when_an_index_is_given() -> None:
    cipher = FieldCipher([("k1", K1)], INDEX)
    key = PatientKey(family_name="Okafor", birth_date="1961-04-12", member_id="M55501234")
    plain = FuzzyPatientMatcher().blocking_keys(key)
    indexed = FuzzyPatientMatcher(index=cipher.blind_index).blocking_keys(key)
    token_key = f"member:{cipher.blind_index('M55501234')}"
    assert "member:M55501234" in plain and token_key in indexed
    assert not any("55501234" in k for k in indexed)
    assert plain - {"member:M55501234"} == indexed - {token_key}


def test_the_keyring_lists_the_active_key_first() -> None:
    keys = parse_keyring(f"k2:{_b64(K2)}, k1:{_b64(K1)}")
    assert keys == (("k2", K2), ("k1", K1))
    cipher = build_cipher(f"k2:{_b64(K2)},k1:{_b64(K1)}", _b64(INDEX))
    assert cipher is not None and cipher.active_key_id == "k2"
    assert cipher.key_ids == ("k2", "k1")


def test_no_keys_means_encryption_off() -> None:
    assert build_cipher(None, None) is None
    assert build_cipher("  ", None) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k1", "entry 1 must read '<key id>:<base64 key>'"),
        (f"bad id:{_b64(K1)}", "entry 1 must read"),
        ("k1:not base64!", "key 'k1' is not valid base64"),
        (f"k1:{_b64(K1[:16])}", "key 'k1' decodes to 16 bytes, a key is 32"),
        (f"k1:{_b64(K1)},k1:{_b64(K2)}", "key id 'k1' appears twice"),
        (" , ", "names no key"),
    ],
)
def test_a_bad_keyring_is_refused_saying_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_keyring(text)


def test_generated_keys_are_random_256_bit_keys() -> None:
    first, second = generate_key(), generate_key()
    assert len(decode_key(first)) == 32 and first != second


def test_settings_name_the_setting_of_a_bad_key_and_never_echo_it() -> None:
    with pytest.raises(
        ValueError, match="CARELOOP_FIELD_KEYS: key 'k1' decodes to 6 bytes"
    ) as error:
        Settings(field_keys="k1:c2VjcmV0", field_index_key=_b64(INDEX))  # type: ignore[arg-type]
    assert "c2VjcmV0" not in str(error.value)
    with pytest.raises(ValueError, match="CARELOOP_FIELD_INDEX_KEY must be set"):
        Settings(field_keys=f"k1:{_b64(K1)}")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CARELOOP_FIELD_INDEX_KEY is not valid base64"):
        Settings(field_keys=f"k1:{_b64(K1)}", field_index_key="%%")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CARELOOP_FIELD_KEYS is not"):
        Settings(field_index_key=_b64(INDEX))  # type: ignore[arg-type]
