"""`display_url`: what `check`, `status`, logs and errors show of a Redis URL. It must never show
a password, however the URL is written, and keep the rest so the server can be recognised."""

from __future__ import annotations

import pytest

from goodsd.ops.common import display_url

SHOWN = [
    # nothing secret: shown as written
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("rediss://cache.example:6380/2", "rediss://cache.example:6380/2"),
    ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
    ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
    # the whole user-info part goes, user name included
    ("redis://:secret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    ("redis://alice:secret@h/0", "redis://***@h/0"),
    ("redis://alice@h/0", "redis://***@h/0"),
    # several @: the last one ends the user info, as urllib and redis-py read it
    ("redis://alice:p@ss@host/0", "redis://***@host/0"),
    ("redis://a@b:c@d@[::1]:7000/3", "redis://***@[::1]:7000/3"),
    # a percent-encoded @ is part of the password
    ("redis://alice:p%40ss@host:6379/0", "redis://***@host:6379/0"),
    ("unix://:secret@/run/redis.sock?db=1", "unix://***@/run/redis.sock?db=1"),
    # password-bearing query parameters: the value goes
    ("unix:///run/redis.sock?password=secret", "unix:///run/redis.sock?password=***"),
    ("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://h/0?PassWord=secret&db=2", "redis://h/0?PassWord=***&db=2"),
    ("redis://h/0?pass%77ord=secret", "redis://h/0?pass%77ord=***"),
    ("rediss://h/0?ssl_password=secret", "rediss://h/0?ssl_password=***"),
    (
        "redis://h/0?api_token=secret&client_auth=secret",
        "redis://h/0?api_token=***&client_auth=***",
    ),
    ("redis://h/0?api_key=k", "redis://h/0?api_key=***"),
    # a name ending in file or path says where a secret is kept, not the secret
    ("rediss://h/0?ssl_keyfile=/k.pem", "rediss://h/0?ssl_keyfile=/k.pem"),
    ("redis://h/0?password", "redis://h/0?password=***"),
    ("redis://h/0?password=", "redis://h/0?password=***"),
    # a fragment would be cut off by redis-py, so it may hold the rest of a password
    ("redis://h/0?password=ab#cd", "redis://h/0?password=***#***"),
    # not a URL urllib can split: nothing after the scheme is shown
    ("redis://:secret@[::1/0", "redis://***"),
]


@pytest.mark.parametrize(("url", "shown"), SHOWN)
def test_display_url_hides_every_secret(url: str, shown: str) -> None:
    assert display_url(url) == shown


@pytest.mark.parametrize(("url", "_"), SHOWN)
def test_no_password_survives(url: str, _: str) -> None:
    # Given any of the URLs above
    # Then neither the secret nor any piece of it after an @ is shown
    shown = display_url(url)
    for secret in ("secret", "p@ss", "ss@", "p%40ss", "cd"):
        assert secret not in shown
