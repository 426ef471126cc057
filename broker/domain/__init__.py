"""Pure domain logic: no I/O, no third-party imports except the RFC 8785 encoder."""
