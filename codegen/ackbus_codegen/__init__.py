"""The ackbus protoc plugin and generator: typed clients and handler bases from .proto files.

``generate(request)`` is the whole generator as a pure function; ``plugin.main`` wraps it
for protoc and ``build``/``ackbus gen`` run protoc with it.
"""

__version__ = "0.1.0"
"""The generator's version, written into every generated file. It is the ackbus
distribution's version: generated code needs a runtime of the same major.minor."""
