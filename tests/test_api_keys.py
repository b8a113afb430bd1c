"""Key scopes found by digest: the same answers the constant-time comparisons gave."""

from __future__ import annotations

from api.keys import KeyScopes
from config.settings import ApiSettings


def test_each_key_holds_the_scopes_of_the_lists_it_is_in() -> None:
    keys = KeyScopes.from_settings(ApiSettings(
        write_keys=["wk"], read_keys=["rk", "rk2"], admin_keys=["ak"],
        point_read_keys={"pk-leeds": "leeds", "pk-york": "york"}))
    assert keys.of("wk") == {"write"}
    assert keys.of("rk") == {"read"}
    assert keys.of("rk2") == {"read"} and keys.of("ak") == {"admin"}
    assert keys.of("pk-york") == {"point"}
    assert keys.point("pk-leeds") == "leeds" and keys.point("rk") is None
    for unknown in ("", "w", "wk ", "WK", "rk-point-leeds"):
        assert keys.of(unknown) == frozenset()


def test_no_keys_configured_means_no_key_is_valid() -> None:
    keys = KeyScopes.from_settings(ApiSettings())
    assert keys.of("anything") == frozenset() and keys.point("anything") is None


def test_a_key_that_is_not_unicode_text_holds_no_scope() -> None:
    """A JSON body's writeKey may be a lone surrogate: no key, not an encoding failure."""
    keys = KeyScopes.from_settings(ApiSettings(write_keys=["wk"],
                                               point_read_keys={"pk": "leeds"}))
    assert keys.of("\ud800") == frozenset() and keys.point("wk\udfff") is None
