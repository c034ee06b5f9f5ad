"""Lock stores: one interface, several storages."""

from ascob_flows.locks.base import (
    Grant,
    LockError,
    LockInfo,
    LockStore,
    LockStoreUnavailable,
    validate_key,
)

__all__ = ["Grant", "LockError", "LockInfo", "LockStore", "LockStoreUnavailable", "validate_key"]
