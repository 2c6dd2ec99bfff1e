"""The bcrypt password hasher and the HS256 session-token issuer: what they accept, and everything they refuse."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.security import BcryptPasswordHasher, JwtTokenIssuer
from domain.ports import PasswordHasher, TokenIssuer

SECRET = "s" * 32
NOW = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64url(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def signed(payload: Any, secret: str = SECRET, algorithm: str = "HS256") -> str:
    """Sign any JSON body as it is, past PyJWT's own claim checks."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return jwt.api_jws.encode(body.encode(), secret, algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "usr_1", "iat": int(NOW), "exp": int(NOW) + 60, "typ": "session"} | overrides


def fastest_verify(hasher: BcryptPasswordHasher, hashed: str, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        hasher.verify("correct horse", hashed)
        best = min(best, time.perf_counter() - start)
    return best


def test_a_hash_verifies_its_password_and_no_other() -> None:
    hasher: PasswordHasher = BcryptPasswordHasher(rounds=4)
    hashed = hasher.hash("correct horse ✓")
    assert hashed.startswith("$2b$04$")
    assert hasher.verify("correct horse ✓", hashed)
    assert not hasher.verify("correct horse", hashed)
    assert not hasher.verify("", hashed)
    assert hasher.hash("correct horse ✓") != hashed  # salted


def test_bytes_after_a_nul_still_count() -> None:
    hasher = BcryptPasswordHasher(rounds=4)
    assert not hasher.verify("a\x00c", hasher.hash("a\x00b"))
    assert not hasher.verify("a", hasher.hash("a\x00b"))


def test_malformed_hashes_verify_false_without_raising() -> None:
    hasher = BcryptPasswordHasher(rounds=4)
    good = hasher.hash("pw")
    for hashed in ("", "garbage", "$2b$04$short", good[:-1], good + "x", "é" * 60, "\ud800"):
        assert not hasher.verify("pw", hashed)


def test_passwords_over_72_bytes_are_refused_not_truncated() -> None:
    hasher = BcryptPasswordHasher(rounds=4)
    assert hasher.verify("a" * 72, hasher.hash("a" * 72))
    with pytest.raises(ValueError, match="72"):
        hasher.hash("a" * 73)
    with pytest.raises(ValueError, match="72"):
        hasher.hash("é" * 37)  # 37 characters, 74 bytes
    assert not hasher.verify("a" * 72 + "b", hasher.hash("a" * 72))


def test_rounds_outside_bcrypt_range_are_refused() -> None:
    for rounds in (3, 32):
        with pytest.raises(ValueError, match="rounds"):
            BcryptPasswordHasher(rounds=rounds)


def test_dummy_hash_never_verifies_and_costs_as_much_as_a_real_check() -> None:
    hasher = BcryptPasswordHasher(rounds=6)
    assert hasher.dummy_hash.startswith("$2b$06$")
    assert not hasher.verify("correct horse", hasher.dummy_hash)
    assert not hasher.verify("", hasher.dummy_hash)
    real = fastest_verify(hasher, hasher.hash("correct horse"))
    dummy = fastest_verify(hasher, hasher.dummy_hash)
    assert real / 3 < dummy < real * 3


def test_issued_token_gives_back_its_subject() -> None:
    issuer: TokenIssuer = JwtTokenIssuer(SECRET, expires_in=3600, clock=FakeClock())
    token = issuer.issue("usr_abc")
    assert issuer.expires_in == 3600
    assert issuer.subject(token) == "usr_abc"
    assert issuer.issue("usr_abc") != token  # jti
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert payload["sub"] == "usr_abc"
    assert payload["typ"] == "session"
    assert payload["exp"] - payload["iat"] == 3600
    assert payload["iat"] == int(NOW)


def test_token_expires_by_the_issuers_clock() -> None:
    clock = FakeClock()
    issuer = JwtTokenIssuer(SECRET, expires_in=60, clock=clock)
    token = issuer.issue("usr_abc")
    clock.now = NOW + 59
    assert issuer.subject(token) == "usr_abc"
    clock.now = NOW + 60
    assert issuer.subject(token) is None
    clock.now = NOW + 10_000
    assert issuer.subject(token) is None


def test_token_issued_in_the_future_is_refused() -> None:
    clock = FakeClock()
    issuer = JwtTokenIssuer(SECRET, clock=clock)
    token = issuer.issue("usr_abc")
    clock.now = NOW - 3600
    assert issuer.subject(token) is None


def test_token_signed_with_another_secret_is_refused() -> None:
    clock = FakeClock()
    other = JwtTokenIssuer("o" * 32, clock=clock).issue("usr_abc")
    assert JwtTokenIssuer(SECRET, clock=clock).subject(other) is None
    assert JwtTokenIssuer(SECRET, clock=clock).subject(jwt.encode(claims(), "o" * 32, algorithm="HS256")) is None


def test_unsigned_alg_none_token_is_refused() -> None:
    issuer = JwtTokenIssuer(SECRET, clock=FakeClock())
    by_hand = b64url({"alg": "none", "typ": "JWT"}) + "." + b64url(claims()) + "."
    assert issuer.subject(by_hand) is None
    assert issuer.subject(by_hand[:-1]) is None
    by_pyjwt = jwt.encode(claims(), None, algorithm="none")
    assert by_pyjwt.endswith(".")
    assert issuer.subject(by_pyjwt) is None
    for alg in ("None", "NONE", "nOnE"):
        assert issuer.subject(b64url({"alg": alg, "typ": "JWT"}) + "." + b64url(claims()) + ".") is None


def test_a_valid_signature_over_a_tampered_header_is_refused() -> None:
    issuer = JwtTokenIssuer(SECRET, clock=FakeClock())
    _, payload, signature = issuer.issue("usr_abc").split(".")
    assert issuer.subject(b64url({"alg": "none", "typ": "JWT"}) + "." + payload + "." + signature) is None
    assert issuer.subject(b64url({"alg": "HS512", "typ": "JWT"}) + "." + payload + "." + signature) is None


def test_only_hs256_is_accepted_even_with_the_right_secret() -> None:
    long_secret = "k" * 64  # long enough for HS512 without a key-length warning
    issuer = JwtTokenIssuer(long_secret, clock=FakeClock())
    assert issuer.subject(jwt.encode(claims(), long_secret, algorithm="HS256")) == "usr_1"
    for alg in ("HS384", "HS512"):
        assert issuer.subject(jwt.encode(claims(), long_secret, algorithm=alg)) is None
    for alg in ("RS256", "ES256", "PS256", "EdDSA"):  # the HMAC secret presented as a "public key"
        forged = b64url({"alg": alg, "typ": "JWT"}) + "." + b64url(claims()) + "."
        assert issuer.subject(forged + base64.urlsafe_b64encode(long_secret.encode()).decode().rstrip("=")) is None


def test_claims_other_than_a_session_are_refused() -> None:
    issuer = JwtTokenIssuer(SECRET, clock=FakeClock())
    assert issuer.subject(signed(claims())) == "usr_1"
    refused = [
        claims(typ="refresh"),
        claims(typ="Session"),
        claims(typ=None),
        {k: v for k, v in claims().items() if k != "typ"},
        {k: v for k, v in claims().items() if k != "exp"},
        {k: v for k, v in claims().items() if k != "iat"},
        {k: v for k, v in claims().items() if k != "sub"},
        claims(sub=""),
        claims(exp="9999999999"),
        claims(exp=True),
        claims(iat="0"),
        claims(nbf=int(NOW) + 3600),
        claims(sub=123),
        claims(sub=None),
        ["usr_1"],
    ]
    for payload in refused:
        assert issuer.subject(signed(payload)) is None, payload


def test_non_finite_times_are_refused() -> None:
    issuer = JwtTokenIssuer(SECRET, clock=FakeClock())
    for field in ("exp", "iat"):
        for value in ("NaN", "Infinity"):
            body = json.dumps(claims(), allow_nan=True).replace(f'"{field}": {claims()[field]}', f'"{field}": {value}')
            assert issuer.subject(signed(body)) is None, (field, value)


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "...", "é.é.é", "\ud800", "Bearer x", "eyJhbGciOiJIUzI1NiJ9.W10.", "\x00" * 100],
)
def test_garbage_tokens_are_refused(token: str) -> None:
    assert JwtTokenIssuer(SECRET).subject(token) is None


@given(st.text())
def test_no_text_makes_subject_raise(token: str) -> None:
    assert JwtTokenIssuer(SECRET).subject(token) is None


def test_short_secrets_and_lifetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        JwtTokenIssuer("s" * 31)
    with pytest.raises(ValueError, match="32 bytes"):
        JwtTokenIssuer("")
    JwtTokenIssuer("é" * 16)  # 32 bytes in UTF-8
    with pytest.raises(ValueError, match="expires_in"):
        JwtTokenIssuer(SECRET, expires_in=0)
