"""Transitional: the kit's helpers under their old names, until every backend is on the kit."""

from backends.kit import ClientsPerLoop, describe, not_sent, secret_from_env

__all__ = ["ClientsPerLoop", "describe", "not_sent", "secret_from_env"]
