import hashlib
import re

from store import CreatedKey, generate_api_key, hash_api_key
from store.keys import display_prefix


def test_generated_key_is_mgw_and_43_url_safe_characters() -> None:
    secret = generate_api_key()

    assert re.fullmatch(r"mgw_[A-Za-z0-9_-]{43}", secret)


def test_generated_keys_differ() -> None:
    assert len({generate_api_key() for _ in range(100)}) == 100


def test_hash_is_the_sha256_hex_digest_of_the_secret() -> None:
    secret = generate_api_key()

    assert hash_api_key(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_api_key(secret))


def test_display_prefix_is_mgw_and_six_characters() -> None:
    assert display_prefix("mgw_ab12cdEFGH") == "mgw_ab12cd"


def test_created_key_repr_hides_the_secret() -> None:
    secret = generate_api_key()
    created = CreatedKey(key=None, secret=secret)  # type: ignore[arg-type]

    assert secret not in repr(created)
