"""Alliance Broker: label-aware, audited sharing of threat intelligence between nations."""

__version__ = "0.1.0"
