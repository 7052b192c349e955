"""The delay topology's arithmetic: bits, keys, bindings and levels."""

from __future__ import annotations

import fnmatch

import pytest

from amqpworker import delay


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching for patterns of '*' words and one trailing '#'."""
    words, parts = key.split("."), pattern.split(".")
    if parts[-1] == "#":
        parts = parts[:-1]
        return len(words) >= len(parts) and all(
            p == "*" or p == w for p, w in zip(parts, words, strict=False)
        )
    return len(words) == len(parts) and all(
        fnmatch.fnmatchcase(w, p) for p, w in zip(parts, words, strict=True)
    )


@pytest.mark.parametrize("seconds", [0, 1, 2, 5, 3600, 86_400 * 365, delay.MAX_DELAY])
def test_a_message_waits_exactly_its_seconds(seconds: int) -> None:
    """Walk the levels as the broker would and add up the TTLs."""
    key = delay.routing_key(seconds, "", "work")
    waited = 0
    for level in reversed(range(delay.entry_level(seconds) + 1)):
        into_queue, onward = delay.level_binding_keys(level)
        assert topic_matches(into_queue, key) != topic_matches(onward, key)
        if topic_matches(into_queue, key):
            waited += delay.level_ttl_ms(level) // 1000
    assert waited == seconds


def test_levels_above_the_entry_level_are_all_zero() -> None:
    key = delay.routing_key(5, "", "q")
    bits = key.split(".")[: delay.LEVELS]
    assert bits[: delay.LEVELS - 3] == ["0"] * (delay.LEVELS - 3)
    assert bits[-3:] == ["1", "0", "1"]
    assert delay.entry_level(5) == 2


def test_routing_key_ends_with_a_dot_free_landing_id() -> None:
    key = delay.routing_key(3, "media", "img.resize")
    landing = key.split(".")[-1]
    assert landing == delay.landing_id("media", "img.resize")
    assert "." not in landing
    assert delay.landing_queue("media", "img.resize").endswith(landing)
    assert delay.landing_id("", "a") != delay.landing_id("a", "")


def test_whole_seconds_leaves_the_remainder_to_the_worker() -> None:
    assert delay.whole_seconds(2.9) == 2
    assert delay.whole_seconds(-3) == 0
    with pytest.raises(ValueError, match="longer than the maximum"):
        delay.whole_seconds(delay.MAX_DELAY + 1)


def test_levels_reach_years() -> None:
    assert delay.MAX_DELAY > 8 * 365 * 86_400
    assert delay.level_name(7) == "amqpworker.delay.07"
    assert delay.level_ttl_ms(3) == 8000
