"""How proto names become Python names.

Every name the generated code defines or references is decided here, never in a
template, so that the rules are unit-tested and collisions are found before any
code is written. The rules (docs/codegen.md repeats them for users):

* rpc ``StartHand`` gives methods ``send_start_hand``, ``on_start_hand``, ...
  (:func:`snake_case`);
* a field whose name is a Python keyword (``from``), or that would shadow a name the
  method itself needs (``self``, ``timeout``, ``wait_ack``, ...), becomes a keyword
  argument with a trailing underscore (``from_``, ``timeout_``);
* rpc ``StartHand`` of service ``Table`` gives the public module constant
  ``TABLE_START_HAND_POLICY``, its schema policy (:func:`policy_name`);
* builtins (``id``, ``type``, ``str``) stay as they are: generated bodies never
  reference a builtin, so shadowing one is harmless and ``id=`` reads as users expect;
* two things that end up with one Python name are an error naming both
  (:class:`Namespace`), never silently renamed.
"""

from __future__ import annotations

import keyword
import re

from .errors import GenerationError

__all__ = [
    "Namespace",
    "importable",
    "is_reserved",
    "module_for_proto",
    "output_for_proto",
    "param_name",
    "policy_name",
    "qualified_alias",
    "snake_case",
]

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``StartHand`` -> ``start_hand``, ``GetHTTPStatus`` -> ``get_http_status``."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def is_reserved(name: str) -> bool:
    """True for names that cannot be used as a Python identifier as they are."""
    return keyword.iskeyword(name) or not name.isidentifier()


def importable(module: str) -> bool:
    """Whether ``import``/``from ... import`` can spell a module path (protoc writes
    modules for folders like ``import/`` or ``v1.2/`` too, but only ``importlib`` reaches
    them)."""
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in module.split("."))


def param_name(field_name: str, taken: frozenset[str] = frozenset()) -> str:
    """The keyword argument for a field: keywords and ``taken`` names get a trailing ``_``."""
    if keyword.iskeyword(field_name) or field_name in taken:
        return field_name + "_"
    return field_name


def policy_name(service: str, rpc: str) -> str:
    """``Table``, ``StartHand`` -> ``TABLE_START_HAND_POLICY``: the module constant holding
    the rpc's schema policy. Service and rpc both appear because one module may hold two
    services with an rpc of one name (an event two services subscribe to); the rare pair
    that still coincides (``Foo.BarBaz`` and ``FooBar.Baz``) is a collision error."""
    return f"{snake_case(service).upper()}_{snake_case(rpc).upper()}_POLICY"


def module_for_proto(proto_path: str) -> str:
    """The Python module protoc writes for a .proto file (``a/b-c.proto`` -> ``a.b_c_pb2``)."""
    stem = proto_path.removesuffix(".proto").replace("-", "_")
    return stem.replace("/", ".") + "_pb2"


def output_for_proto(proto_path: str) -> str:
    """The file ackbus writes beside protoc's ``_pb2.py``."""
    return proto_path.removesuffix(".proto").replace("-", "_") + "_ackbus.py"


def qualified_alias(module: str) -> str:
    """An import alias unique per module, in protoc's own style (``a_dot_b__pb2``)."""
    return module.replace("_", "__").replace(".", "_dot_")


class Namespace:
    """One Python scope of generated names, each with the proto element it came from.

    :meth:`claim` fails on a second owner of a name: every generated name is one a user
    may type, so none is ever silently renamed.
    """

    def __init__(self, scope: str, reserved: dict[str, str] | None = None) -> None:
        self.scope = scope
        self._owners: dict[str, str] = dict(reserved or {})

    def __contains__(self, name: object) -> bool:
        return name in self._owners

    def snapshot(self) -> dict[str, str]:
        return dict(self._owners)

    def restore(self, snapshot: dict[str, str]) -> None:
        self._owners = dict(snapshot)

    def claim(self, name: str, owner: str) -> str:
        known = self._owners.get(name)
        if known is not None:
            raise GenerationError(
                f"{owner} and {known} both become {name!r} in {self.scope}; rename one of them"
            )
        self._owners[name] = owner
        return name
