"""The API key format: `vec_` + 26 random base62 characters + a base62 CRC-32 checksum, refused without a lookup
when mistyped, stored only as a SHA-256 digest and named by its first 12 characters."""

from __future__ import annotations

import hashlib
import string
import zlib

from hypothesis import assume, given
from hypothesis import strategies as st

from domain.api_keys import (
    ALPHABET,
    display_prefix,
    key_digest,
    looks_like_account_key,
    new_api_key,
    new_id,
    well_formed,
)

BASE62 = string.digits + string.ascii_lowercase + string.ascii_uppercase
NOT_BASE62 = "-_+/=. ~é\u0663\uff10\x00"  # Arabic-Indic and fullwidth digits: digits to str.isdigit(), not here
random_parts = st.text(alphabet=BASE62, min_size=26, max_size=26)


def reference_key(random_part: str, prefix: str = "vec_") -> str:
    """The documented format, written out independently of the module under test."""
    body = prefix + random_part
    value = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = BASE62[digit] + digits
    return body + digits


def test_alphabet_is_base62() -> None:
    assert ALPHABET == BASE62
    assert len(set(ALPHABET)) == 62


def test_new_keys_are_36_base62_characters_after_vec() -> None:
    for _ in range(200):
        key = new_api_key()
        assert len(key) == 36
        assert key.startswith("vec_")
        assert set(key[4:]) <= set(BASE62)
        assert well_formed(key)
        assert looks_like_account_key(key)


def test_new_keys_are_unique() -> None:
    keys = [new_api_key() for _ in range(5000)]
    assert len(set(keys)) == len(keys)
    assert len({display_prefix(key) for key in keys}) == len(keys)


def test_checksum_is_base62_crc32_of_the_prefixed_body() -> None:
    for _ in range(200):
        key = new_api_key()
        assert reference_key(key[4:30]) == key


@given(random_parts)
def test_any_key_in_the_documented_format_is_well_formed(random_part: str) -> None:
    assert well_formed(reference_key(random_part))


def test_every_single_character_change_after_the_prefix_is_refused() -> None:
    for _ in range(20):
        key = new_api_key()
        for position in range(4, 36):
            for replacement in BASE62 + NOT_BASE62:
                if replacement != key[position]:
                    mutated = key[:position] + replacement + key[position + 1 :]
                    assert not well_formed(mutated), (key, position, replacement)


@given(random_parts, st.integers(min_value=4, max_value=35), st.characters())
def test_a_single_character_change_is_refused(random_part: str, position: int, replacement: str) -> None:
    key = reference_key(random_part)
    assume(replacement != key[position])
    assert not well_formed(key[:position] + replacement + key[position + 1 :])


def test_adjacent_transpositions_are_refused() -> None:
    for _ in range(20):
        key = new_api_key()
        for position in range(4, 35):
            swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
            assert swapped == key or not well_formed(swapped)


def test_wrong_lengths_are_refused() -> None:
    key = new_api_key()
    for candidate in ("", "vec_", key[:-1], key[1:], key + "a", "a" + key, key + key, key[:12]):
        assert not well_formed(candidate), candidate
    for length in (25, 27):  # a checksum that matches a body of the wrong length
        assert not well_formed(reference_key("a" * length))
    assert not looks_like_account_key(key[:-1])
    assert not looks_like_account_key(key + "a")


def test_other_prefixes_are_refused_even_with_a_matching_checksum() -> None:
    random_part = new_api_key()[4:30]
    for prefix in ("VEC_", "Vec_", "vec-", "vek_", "sk-_", "vec0", "ve_c"):
        key = reference_key(random_part, prefix)
        assert len(key) == 36
        assert not well_formed(key), prefix
        assert not looks_like_account_key(key)
    assert not well_formed("sk-" + new_api_key()[3:])


def test_characters_outside_base62_are_refused_even_with_a_matching_checksum() -> None:
    random_part = new_api_key()[4:30]
    for bad in "-_+/=. ~\x00":
        assert not well_formed(reference_key(bad + random_part[1:])), repr(bad)
    for bad in "é\u0663\uff10":
        assert not well_formed("vec_" + bad + new_api_key()[5:])


def test_a_jwt_or_other_credential_is_refused() -> None:
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3JfMSJ9.c2lnbmF0dXJl"
    for candidate in (jwt_like, "Bearer " + new_api_key(), " " + new_api_key(), new_api_key() + "\n"):
        assert not well_formed(candidate)


@given(st.text(max_size=40))
def test_well_formed_never_raises_on_any_text(candidate: str) -> None:
    assert well_formed(candidate) in (True, False)
    assert well_formed("vec_" + candidate) in (True, False)


@given(st.text(min_size=32, max_size=32))
def test_a_well_formed_key_is_one_in_the_documented_format(rest: str) -> None:
    candidate = "vec_" + rest
    assert looks_like_account_key(candidate)
    assert well_formed(candidate) == (set(rest) <= set(BASE62) and reference_key(rest[:26]) == candidate)


def test_digest_is_sha256_of_the_key() -> None:
    key = new_api_key()
    digest = key_digest(key)
    assert digest == hashlib.sha256(key.encode("ascii")).digest()
    assert len(digest) == 32
    assert key_digest(new_api_key()) != digest


def test_display_prefix_is_the_first_12_characters() -> None:
    key = new_api_key()
    prefix = display_prefix(key)
    assert len(prefix) == 12
    assert prefix == key[:12]
    assert prefix.startswith("vec_")


def test_ids_are_the_kind_and_20_lowercase_base36_characters() -> None:
    ids = {new_id("usr") for _ in range(1000)}
    assert len(ids) == 1000
    for identifier in ids:
        kind, _, rest = identifier.partition("_")
        assert kind == "usr"
        assert len(rest) == 20
        assert set(rest) <= set(string.digits + string.ascii_lowercase)
    assert new_id("key").startswith("key_")
