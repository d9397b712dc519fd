"""``EndpointOptions`` is exactly ``Endpoint``'s keyword options, so the wrappers that take
``**options: Unpack[EndpointOptions]`` type-check what ``Endpoint`` itself would."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import ackbus._types
import pytest
from ackbus._options import EndpointOptions
from ackbus._types import (
    AsyncBus,
    BlockingBus,
    PublishOptions,
    RequestOptions,
    SendOptions,
)
from ackbus.blocking import BlockingEndpoint
from ackbus.endpoint import Endpoint


def test_endpoint_options_are_endpoints_keyword_only_parameters() -> None:
    hints = typing.get_type_hints(Endpoint.__init__)
    keyword_only = {
        name: hints[name]
        for name, p in inspect.signature(Endpoint.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert typing.get_type_hints(EndpointOptions) == keyword_only
    assert EndpointOptions.__required_keys__ == frozenset()


def test_blocking_endpoint_takes_the_endpoints_positional_parameters_and_the_options() -> None:
    blocking = inspect.signature(BlockingEndpoint.__init__).parameters
    endpoint = inspect.signature(Endpoint.__init__).parameters
    positional = [n for n, p in endpoint.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert list(blocking) == [*positional, "options"]
    assert (
        typing.get_type_hints(BlockingEndpoint.__init__)["options"]
        == typing.Unpack[EndpointOptions]
    )


@pytest.mark.parametrize(
    ("method", "options"),
    [("send", SendOptions), ("publish", PublishOptions), ("request", RequestOptions)],
)
def test_send_options_are_the_endpoints_keyword_only_parameters(method: str, options: type) -> None:
    """Each send option is declared once (ackbus._types); the endpoint spells them out
    for speed, and must spell exactly those."""
    fn = getattr(Endpoint, method)
    hints = typing.get_type_hints(fn)
    keyword_only = {
        name: hints[name]
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert typing.get_type_hints(options) == keyword_only
    assert options.__required_keys__ == frozenset()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "options"),
    [("send", SendOptions), ("publish", PublishOptions), ("request", RequestOptions)],
)
def test_blocking_and_bus_methods_take_the_declared_options(method: str, options: type) -> None:
    for cls in (BlockingEndpoint, AsyncBus, BlockingBus):
        hints = typing.get_type_hints(getattr(cls, method))
        assert hints["options"] == typing.Unpack[options], (cls, method)


def test_each_send_option_is_declared_once() -> None:
    """In the source: every option stands in one of the TypedDicts, once."""
    tree = ast.parse(Path(ackbus._types.__file__).read_text())
    names = (
        "SendOptionsBase",
        "PublishOptions",
        "CallOptions",
        "RequestOptions",
        "CommandOptions",
        "SendOptions",
    )
    declared = [
        stmt.target.id
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name in names
        for stmt in node.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    ]
    assert sorted(declared) == sorted(set(typing.get_type_hints(SendOptions)))
