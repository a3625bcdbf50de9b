"""AES-GCM encryption at rest for the most sensitive identifiers in a case payload.

A sealed value is self-describing text, ``enc:v1:<key id>:<base64url(nonce|ciphertext)>``,
so a database holds values sealed under several keys while a rotation runs and each
value opens with the key it names. The associated data binds a ciphertext to its field
path: a member ID copied into another field, or into another version of the format,
fails to open instead of reading as valid.

Encrypted values cannot be compared in SQL, so identifiers that must stay searchable
by exact value get a blind index: an HMAC-SHA256 token under a key of its own, which
never changes with the encryption keys, so rotating them leaves every index in place.

Which fields and why: docs/encryption.md.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from careloop.domain.matching import normalize_identifier

# The member IDs: a subscriber identifier is what insurance fraud and medical identity
# theft need, and nothing in careloop compares it other than by exact value. The MRN
# stays plaintext: it is the patient reference of audit entries and of the work queue,
# which audit reports filter by (see docs/encryption.md).
SEALED_FIELDS: tuple[str, ...] = ("patient.member_id", "payer.member_id")
# Fields that were in the work queue's free-text search before encryption; they stay
# findable by exact value through their blind index token.
SEARCHABLE_FIELDS: tuple[str, ...] = ("patient.member_id",)

PREFIX = "enc:v1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the 96-bit nonce GCM is specified for; random per value
INDEX_PREFIX = "bi1"
_INDEX_HEX = 32  # 128 bits of the HMAC: collisions are out of reach, tokens stay short
_INDEX_INFO = b"careloop field blind index v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class SealedValueError(Exception):
    """A stored value cannot be opened: unknown key id, tampered or malformed.

    Not a ``CareloopError``: the caller did nothing wrong, the stored data or the key
    configuration is broken, so the API answers 500 and an operator must look."""


def generate_key() -> str:
    """A fresh random 256-bit key, base64 encoded, for CARELOOP_FIELD_KEYS."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def decode_key(text: str) -> bytes:
    """A base64 key of exactly 256 bits; ValueError says what is wrong."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as error:
        raise ValueError("is not valid base64") from error
    if len(key) != KEY_BYTES:
        raise ValueError(f"decodes to {len(key)} bytes, a key is {KEY_BYTES} (256 bits)")
    return key


def parse_keyring(text: str) -> tuple[tuple[str, bytes], ...]:
    """``"k2:<base64>,k1:<base64>"`` -> ((id, key), ...); the first is the active key."""
    keys: list[tuple[str, bytes]] = []
    for position, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        key_id, separator, encoded = item.partition(":")
        key_id = key_id.strip()
        if not separator or not _KEY_ID.match(key_id):
            raise ValueError(
                f"entry {position + 1} must read '<key id>:<base64 key>' with a key id of "
                "1-32 letters, digits, '-' or '_'"
            )
        if any(key_id == seen for seen, _ in keys):
            raise ValueError(f"key id {key_id!r} appears twice")
        try:
            keys.append((key_id, decode_key(encoded)))
        except ValueError as error:
            raise ValueError(f"key {key_id!r} {error}") from error
    if not keys:
        raise ValueError("names no key")
    return tuple(keys)


def _associated_data(key_id: str, path: str) -> bytes:
    return f"{PREFIX}{key_id}:{path}".encode()


def _split(sealed: str) -> tuple[str, bytes]:
    key_id, _, body = sealed[len(PREFIX) :].partition(":")
    try:
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as error:
        raise SealedValueError("a sealed value is malformed (not base64)") from error
    if len(blob) <= NONCE_BYTES:
        raise SealedValueError("a sealed value is malformed (too short)")
    return key_id, blob


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def sealed_key_id(value: object) -> str | None:
    """The key id a sealed value names, or None for anything else."""
    if not is_sealed(value):
        return None
    return str(value)[len(PREFIX) :].partition(":")[0]


class FieldCipher:
    """A keyring of AES-256-GCM keys (the first seals, any opens) and a blind index."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], index_key: bytes) -> None:
        if not keys:
            raise ValueError("a field cipher needs at least one key")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.active_key_id = keys[0][0]
        # Derived rather than used as given, so the index key can never double as an
        # encryption key even if an operator pastes the same secret into both settings.
        self._index_key = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_INDEX_INFO
        ).derive(index_key)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def seal(self, value: str, path: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        aad = _associated_data(self.active_key_id, path)
        ciphertext = self._keys[self.active_key_id].encrypt(nonce, value.encode(), aad)
        body = base64.urlsafe_b64encode(nonce + ciphertext).decode().rstrip("=")
        return f"{PREFIX}{self.active_key_id}:{body}"

    def open(self, sealed: str, path: str) -> str:
        key_id, blob = _split(sealed)
        aead = self._keys.get(key_id)
        if aead is None:
            raise SealedValueError(
                f"{path} is sealed with key {key_id!r}, which is not in CARELOOP_FIELD_KEYS "
                f"(configured: {', '.join(self._keys)})"
            )
        try:
            aad = _associated_data(key_id, path)
            plain = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag as error:
            raise SealedValueError(
                f"{path} does not open with key {key_id!r}: the value was altered or "
                "belongs to another field"
            ) from error
        return plain.decode()

    def blind_index(self, value: str) -> str:
        """A stable token for exact-match lookups; equal for spellings of one identifier
        ('m-555 01234' and 'M55501234'), empty when nothing identifying is left."""
        normalised = normalize_identifier(value)
        if not normalised:
            return ""
        digest = hmac.new(self._index_key, normalised.encode(), hashlib.sha256).hexdigest()
        return INDEX_PREFIX + digest[:_INDEX_HEX]

    # -- whole payloads ---------------------------------------------------------------

    def seal_data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``data`` with every chosen field sealed under the active key."""
        return _with_fields(data, self._seal_plain)

    def open_data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``data`` with every sealed field opened (plaintext left as it is,
        for cases written before encryption was switched on)."""
        return _with_fields(data, self._open_sealed)

    def reseal_data(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """``data`` sealed entirely under the active key, or None if it already is."""
        stale = [
            path
            for path, value in _present(data)
            if not is_sealed(value) or sealed_key_id(value) != self.active_key_id
        ]
        if not stale:
            return None
        return self.seal_data(self.open_data(data))

    def index_tokens(self, data: Mapping[str, Any]) -> list[str]:
        """Blind index tokens of the searchable fields (of plaintext ``data``)."""
        tokens = []
        for path in SEARCHABLE_FIELDS:
            value = _lookup(data, path)
            if isinstance(value, str) and (token := self.blind_index(value)):
                tokens.append(token)
        return tokens

    def _seal_plain(self, value: str, path: str) -> str:
        return value if is_sealed(value) else self.seal(value, path)

    def _open_sealed(self, value: str, path: str) -> str:
        return self.open(value, path) if is_sealed(value) else value


def build_cipher(keys: str | None, index_key: str | None) -> FieldCipher | None:
    """The configured cipher, or None when encryption is off (no keys)."""
    if not keys or not keys.strip():
        return None
    if not index_key:
        raise ValueError("a blind index key is required with field keys")
    return FieldCipher(parse_keyring(keys), decode_key(index_key))


def key_ids_in(data: Mapping[str, Any]) -> list[str]:
    """For each chosen field present: the key id it is sealed with, or '' (plaintext)."""
    return [sealed_key_id(value) or "" for _, value in _present(data)]


def _lookup(data: Mapping[str, Any], path: str) -> object:
    node: object = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _present(data: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for path in SEALED_FIELDS:
        value = _lookup(data, path)
        if isinstance(value, str) and value:
            yield path, value


def _with_fields(data: Mapping[str, Any], change: Callable[[str, str], str]) -> dict[str, Any]:
    result = dict(data)
    for path, value in _present(data):
        parent, _, name = path.rpartition(".")
        # Copy only the objects on the way to a changed field: the caller's payload
        # (the domain's plaintext) must stay as it is.
        node = result
        for part in parent.split(".") if parent else ():
            node[part] = copy.copy(node[part])
            node = node[part]
        node[name] = change(value, path)
    return result
