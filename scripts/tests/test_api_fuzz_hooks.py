"""The fuzz hooks' own decisions, on cases built by hand (no server)."""

from __future__ import annotations

from types import SimpleNamespace

from t2i_scripts.ops.api_fuzz_hooks import formats_negated_with_null


def case(body: dict, *mutations: tuple[tuple[str, ...], tuple]) -> SimpleNamespace:
    made = tuple(SimpleNamespace(keywords=keywords, path=path) for keywords, path in mutations)
    return SimpleNamespace(
        meta=SimpleNamespace(phase=SimpleNamespace(data=SimpleNamespace(mutations=made))), body=body
    )


def test_only_a_null_left_by_a_negated_format_is_skipped():
    null = {"feedback_filter": {"model": None}}
    assert formats_negated_with_null(case(null, (("format",), ("feedback_filter", "model"))))
    # A string that is not a known id really is invalid, and so is any other negated keyword.
    named = {"feedback_filter": {"model": "no-such-version"}}
    assert not formats_negated_with_null(case(named, (("format",), ("feedback_filter", "model"))))
    assert not formats_negated_with_null(case(null, (("format", "type"), ("feedback_filter", "model"))))
    # Every mutation must be such a one; a path that is not in the body keeps the case.
    both = case(
        null, (("format",), ("feedback_filter", "model")), (("maxLength",), ("feedback_filter", "rater"))
    )
    assert not formats_negated_with_null(both)
    assert not formats_negated_with_null(case(null, (("format",), ("base_model",))))
    assert not formats_negated_with_null(case(null))
