"""Errors a user reads: each names the workflow file, the node and the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, located as precisely as the parser allows."""

    file: str
    node: str | None
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where]
        if self.node is not None:
            parts.append(f"node '{self.node}'")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts) + f": {self.message}"


def _restore(cls: type, args: tuple, state: dict) -> BaseException:
    """Unpickle an sdflow error as it was: its message (args) and attributes, without calling ``__init__``."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class WorkflowError(Exception):
    """Base of every error sdflow reports about a workflow (exit non-zero, nothing written).

    Errors cross process boundaries (submitit, Ray pickle them): every subclass unpickles with its message
    and attributes, whatever its constructor takes.
    """

    def __reduce__(self):
        return _restore, (type(self), self.args, dict(self.__dict__))


class InvalidWorkflow(WorkflowError):
    """Refused before anything ran (exit status 2): a workflow, a sweep or a command line that cannot run."""


class ValidationError(InvalidWorkflow):
    """All problems found before anything ran, reported at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        count = len(self.problems)
        header = f"workflow is invalid ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


class NodeRunError(WorkflowError):
    """A node failed while running; the original exception is chained as the cause."""

    def __init__(self, file: str, node: str, node_type: str, cause: BaseException):
        self.file, self.node, self.node_type = file, node, node_type
        self.cause_type = type(cause).__name__  # the chained cause itself does not survive pickling
        super().__init__(f"{file}, node '{node}' ({node_type}) failed: {type(cause).__name__}: {cause}")


class ModelSourceError(WorkflowError):
    """A model source that cannot be loaded: missing folder, unreachable hub id, refused pickle."""

    def __init__(self, file: str, node: str, field: str, message: str):
        self.problem = Problem(file, node, field, message)
        self.node = node
        super().__init__(str(self.problem))
