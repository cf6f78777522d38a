"""Typed errors shared by every layer.

User errors (bad input, a parity failure, a backend missing here) derive from
``DualrateError`` and carry the process exit code the CLI uses; anything else is
an internal bug and keeps its traceback. Messages follow one pattern: what was
asked, what was found, what to do.
"""

from __future__ import annotations


class DualrateError(Exception):
    """Base of every error a user can cause; ``exit_code`` is the CLI's code."""

    exit_code = 2


class BadInputError(DualrateError):
    """Input the user supplied is wrong (file, option, shape); exit code 2."""


class CheckpointError(BadInputError):
    """A checkpoint is missing, corrupt, or does not match its config."""


class SpecError(BadInputError):
    """A sampler spec is malformed; the message names the field."""


class BundleError(BadInputError):
    """A bundle is missing files, has extra files, or fails its hashes."""


class OutputExistsError(BadInputError):
    """The output path exists and ``--force`` was not given."""


class NonFiniteError(DualrateError):
    """A NaN/Inf appeared while sampling; names the step and the graph."""

    exit_code = 1


class ParityError(DualrateError):
    """A numerical gate failed."""

    exit_code = 1


class BackendUnavailableError(DualrateError):
    """A backend cannot run on this machine; the message says why and how to fix it."""

    exit_code = 3
