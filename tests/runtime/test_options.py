"""``EndpointOptions`` is exactly ``Endpoint``'s keyword options, so the wrappers that take
``**options: Unpack[EndpointOptions]`` type-check what ``Endpoint`` itself would."""

from __future__ import annotations

import inspect
import typing

from ackbus._options import EndpointOptions
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
