"""The profile a read returns: every feature of `features.values` at a given `now`, the
category interest, RFM scores and segment, memberships, traits, and per feature group the
time it last changed.

Features that depend on time (recency, windowed counts, lifecycle stage) are computed at
read time, so a profile is never stale just because the client has been quiet.
"""

from __future__ import annotations

from typing import Any

from features import rfm
from features.events import format_time
from features.rules import SegmentRules
from features.segments import public_segments
from features.state import ClientState
from features.values import FEATURES, Context, Kind, group_times, rfm_scores

# (name, getter, is a time) of every feature, in table order: read on every profile request
_GETTERS = tuple((name, f.get, f.kind is Kind.TIME) for name, f in FEATURES.items())


def profile_features(state: ClientState, now: float, rules: SegmentRules) -> dict[str, Any]:
    context = Context(state, now, rules)
    features: dict[str, Any] = {}
    for name, get, is_time in _GETTERS:
        value = get(context)
        features[name] = format_time(value) if is_time else value
    features.update(product_lists(state),
                    checkout_started_at=format_time(state.checkout_started_at))
    return features


PRODUCT_LISTS = ("cart_products", "recently_viewed", "favourites")


def product_lists(state: ClientState) -> dict[str, list[str]]:
    """The product-id lists a profile holds beside the feature table (newest view first)."""
    return {"cart_products": [line.product_id for line in state.cart],
            "recently_viewed": [pid for pid, _ in reversed(state.viewed)],
            "favourites": [pid for pid, _ in state.favourites]}


def profile_row(client_key: str, state: ClientState, now: float, rules: SegmentRules
                ) -> dict[str, Any]:
    """One flat row for tables (Parquet): every feature at `now`, times as epoch seconds."""
    context = Context(state, now, rules)
    row: dict[str, Any] = {"client_id": client_key}
    for name, feature in FEATURES.items():
        row[name] = feature.get(context)
    row["checkout_started_at"] = state.checkout_started_at
    row.update(product_lists(state))
    row["updated_at"] = state.updated_at
    return row


def category_interest(state: ClientState) -> list[dict[str, Any]]:
    """Categories by interactions, most first (ties: most recent first)."""
    ranked = sorted(state.interests, key=lambda i: (-i.count, -i.last_at, i.category))
    return [{"category": i.category, "interactions": i.count,
             "last_interaction_at": format_time(i.last_at),
             "viewed_at": format_time(i.viewed_at), "carted_at": format_time(i.carted_at),
             "bought_at": format_time(i.bought_at)} for i in ranked]


def rfm_document(state: ClientState, now: float, rules: SegmentRules) -> dict[str, Any] | None:
    scores = rfm_scores(Context(state, now, rules))
    if scores is None or rules.rfm_model is None:
        return None
    slug = rfm.rfm_segment(*scores)
    return {"r": scores[0], "f": scores[1], "m": scores[2], "segment": slug,
            "segment_name": dict(rfm.RFM_SEGMENTS)[slug], "mode": rules.rfm_model.mode,
            "model_at": format_time(rules.rfm_model.computed_at)}


def profile_document(client_key: str, state: ClientState, now: float,
                     rules: SegmentRules | None = None) -> dict[str, Any]:
    rules = SegmentRules() if rules is None else rules
    return {
        "client_id": client_key,
        "updated_at": format_time(state.updated_at),
        "features": profile_features(state, now, rules),
        "category_interest": category_interest(state),
        "rfm": rfm_document(state, now, rules),
        "segments": [{"segment": name, "entered_at": format_time(at)}
                     for name, at in public_segments(state)],
        "traits": dict(state.traits),
        "aliases": list(state.aliases),
        "freshness": {group: format_time(at) for group, at in group_times(state).items()},
    }
