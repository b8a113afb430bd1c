"""The frozen records whose `__init__` is written out (see `features.__init__`) keep the
contract of the one `dataclass` would generate: every field, in order, by position or by
name, with the field's default or a fresh default_factory value, and still frozen."""

from __future__ import annotations

import ast
import functools
import importlib
from dataclasses import MISSING, Field, FrozenInstanceError, fields, is_dataclass
from typing import Any

import pytest

import features
from features.events import Event, EventType, Order, Product
from features.rules import SegmentRules
from features.state import ClientState, new_state

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

# the records made per event (and the state, per new or loaded client): the discovery below
# must find each of these
HOT = {"Event", "Product", "Order", "Trigger", "Outcome", "Decision", "Candidate", "Context",
       "TimelineEntry", "CartLine", "OrderRecord", "PendingTrigger", "CategoryOrders",
       "CategoryInterest", "ClientState"}


def _generated(function: object) -> bool:
    """`dataclass` compiles its methods from text: their code's file is "<string>"."""
    code = getattr(function, "__code__", None)
    return code is not None and code.co_filename == "<string>"


def _written_out() -> list[type]:
    records = []
    for path in features.compiled_sources():  # the core's modules, as the build knows them
        module = importlib.import_module(f"features.{path.stem}")
        for value in vars(module).values():
            if (isinstance(value, type) and is_dataclass(value)
                    and value.__module__ == module.__name__
                    and "__init__" in vars(value) and not _generated(value.__init__)):
                records.append(value)
    return sorted(records, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


WRITTEN_OUT = _written_out()


def test_the_records_made_per_event_are_found() -> None:
    assert {cls.__name__ for cls in WRITTEN_OUT} >= HOT
    assert {"Event", "Trigger", "Outcome"} <= {cls.__name__ for cls in WRITTEN_OUT
                                                if _made(cls)}


def _state() -> ClientState:
    return new_state(Event("e1", EventType.VISIT, 1.0, 1.0, client_id="c1"))


@functools.cache
def _annotations(cls: type) -> dict[str, str]:
    """The fields' annotations as the sources write them: the compiled core keeps types, and
    not all of them (an optional is `type` there)."""
    path = features.SOURCES / f"{cls.__module__.rpartition('.')[2]}.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    raise AssertionError(f"{cls.__name__} is not in {path}")


def _sample(cls: type, spec: Field[Any], index: int) -> Any:
    """A value of the field's type unlike its default and every other field's: the
    compiled core checks argument types, so a bare `object()` will not do."""
    kind = _annotations(cls)[spec.name].removesuffix(" | None")
    simple: dict[str, Any] = {
        "str": f"{spec.name}-{index}", "float": index + 0.25, "int": index + 3, "bool": True,
        "EventType": EventType.NPS_ANSWER, "Order": Order("o1", 9.5),
        "ClientState": _state(), "SegmentRules": SegmentRules(rfm_enabled=False),
        "Buckets": ((index, 1),),
        # a fixed-length tuple is a native type there: its items are checked too
        "tuple[float, float, float]": (index + 0.25, index + 0.5, index + 0.75)}
    if kind in simple:
        return simple[kind]
    container = kind.partition("[")[0]
    if container == "tuple":
        return (Product(f"p{index}"),)
    if container in ("Mapping", "dict"):
        return {spec.name: index}
    if container == "list":
        return [spec.name]
    raise AssertionError(f"add a sample value for {spec.type!r} ({spec.name})")


def _samples(cls: type) -> dict[str, Any]:
    samples = {spec.name: _sample(cls, spec, index) for index, spec in enumerate(fields(cls))}
    flags = [name for name, value in samples.items() if isinstance(value, bool)]
    assert len(flags) <= 1, f"{cls.__name__}: give the test a way to tell {flags} apart"
    return samples


def _required(cls: type) -> dict[str, Any]:
    samples = _samples(cls)
    return {spec.name: samples[spec.name] for spec in fields(cls)
            if spec.default is MISSING and spec.default_factory is MISSING}


def _ids(cls: type) -> str:
    return cls.__name__


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=_ids)
def test_every_field_is_set_by_position_and_by_name(cls: type) -> None:
    samples = _samples(cls)
    by_position = cls(*samples.values())
    by_name = cls(**samples)
    for name, value in samples.items():  # equal, not the same: the compiled core unboxes
        for record in (by_position, by_name):
            assert getattr(record, name) == value and type(getattr(record, name)) is type(value)
    assert by_position == by_name


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=_ids)
def test_unset_fields_take_their_defaults(cls: type) -> None:
    required = _required(cls)
    first, second = cls(**required), cls(**required)
    for spec in fields(cls):
        if spec.name in required:
            assert getattr(first, spec.name) == required[spec.name]
        elif spec.default_factory is not MISSING:
            assert getattr(first, spec.name) == spec.default_factory()
            assert getattr(first, spec.name) is not getattr(second, spec.name), spec.name
        else:
            assert getattr(first, spec.name) == spec.default, spec.name


def _made(cls: type) -> list[Field[Any]]:
    return [spec for spec in fields(cls) if spec.default_factory is not MISSING]


@pytest.mark.parametrize("cls", [cls for cls in WRITTEN_OUT if _made(cls)], ids=_ids)
def test_none_for_a_default_factory_field_is_a_fresh_default(cls: type) -> None:
    made = _made(cls)
    nones = {spec.name: None for spec in made}
    first, second = cls(**_required(cls), **nones), cls(**_required(cls), **nones)
    for spec in made:
        assert getattr(first, spec.name) == spec.default_factory()
        assert getattr(first, spec.name) is not getattr(second, spec.name), spec.name


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=_ids)
def test_a_missing_or_unknown_argument_is_refused(cls: type) -> None:
    required = _required(cls)
    with pytest.raises(TypeError):
        cls(**required, not_a_field=1)
    if required:
        with pytest.raises(TypeError):
            cls(**dict(list(required.items())[:-1]))


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=_ids)
def test_they_stay_frozen(cls: type) -> None:
    record = cls(**_required(cls))
    with pytest.raises(FrozenInstanceError):
        setattr(record, fields(cls)[0].name, None)
