"""The ackbus protoc plugin and generator: typed clients and handler bases from .proto files."""
