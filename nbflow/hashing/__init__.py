"""Fingerprints of values and identities of code, the two halves of a cache key.

A task's cache key combines the identity of its code with the fingerprints of its inputs; both are
32-hex-character ``xxh3_128`` digests that stay the same across processes, kernel restarts and
``PYTHONHASHSEED`` values.
"""

from __future__ import annotations

from nbflow.hashing.code import code_identity, source_identity
from nbflow.hashing.values import (
    FORMAT_VERSION,
    Fingerprinter,
    fingerprint,
    fingerprint_many,
    register,
    unregister,
)

__all__ = [
    # values
    "FORMAT_VERSION",
    "Fingerprinter",
    "fingerprint",
    "fingerprint_many",
    "register",
    "unregister",
    # code
    "code_identity",
    "source_identity",
]
