"""Telling Ray's own failures (a lost actor, worker, node or object: rerun the stage) from errors
raised by the stage's code (a bad image or weights file: tell the user), through the exception
chains Ray wraps them in."""

from ray.exceptions import RayError, RayTaskError

from whichmodel.core.errors import ImageDecodeError, UserError


def worker_error(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray exception chain (bad image, bad weights), or ``exc``."""
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        # Ray re-raises worker errors as subclasses of both RayError and the original type,
        # with the traceback as their text; the original instance is their ``cause``.
        if isinstance(cause, UserError | ImageDecodeError) and not isinstance(cause, RayError):
            return UserError(str(cause))
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    # Last resort: the worker's traceback text names the original error on a line of its own.
    for line in reversed(str(exc).splitlines()):
        for prefix in (
            "whichmodel.core.errors.ImageDecodeError: ",
            "whichmodel.core.errors.UserError: ",
        ):
            if line.strip().startswith(prefix):
                return UserError(line.strip()[len(prefix) :])
    return exc


def is_ray_failure(exc: BaseException) -> bool:
    """Whether a Ray system failure (a dead actor, worker or node, a lost object) is in the
    exception chain, as opposed to an error raised by the stage's own code."""
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, RayError) and not isinstance(cause, RayTaskError):
            return True
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return False
