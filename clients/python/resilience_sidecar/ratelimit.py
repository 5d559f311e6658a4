"""Rate limits: ``Client.take`` answers a typed :class:`RateDecision`;
``@client.rate_limited(...)`` runs a function only once its cost was taken,
waiting up to a bound, or raises :class:`RateLimited` with the retry delay."""

from __future__ import annotations

import asyncio
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from ._util import Seconds, durations, seconds
from .errors import RateLimited
from .v1 import ratelimit_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["KeyArg", "RateDecision", "decision_from", "take_deadline", "take_request"]

F = TypeVar("F", bound=Callable[..., Any])

#: A rate limit key, or a function of the decorated function's arguments
#: returning one (e.g. ``lambda user, *_: f"user/{user}"``).
KeyArg = Union[str, Callable[..., str]]


@dataclass(frozen=True)
class RateDecision:
    """The answer of a Take.

    ``allowed``: the cost was taken. ``remaining``: the largest cost a Take
    made now would be allowed. ``retry_after`` (seconds, set when refused):
    how long until the cost fits if no one else takes from the key.
    ``reset_after`` (seconds): until the key is back to full capacity.
    ``limit``: the limiter's capacity (burst, or limit per window).
    ``degraded``: the store was down and the limiter's ``store_down`` mode
    answered. ``cached``: refused from the sidecar's memory of an exhausted
    key.
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int
    degraded: bool = False
    cached: bool = False

    def __bool__(self) -> bool:
        return self.allowed


def take_request(limiter: str, key: str, cost: int, wait: Optional[Seconds]) -> ratelimit_pb2.TakeRequest:
    w = seconds(wait)
    return ratelimit_pb2.TakeRequest(limiter=limiter, key=key, cost=cost, **durations(wait_timeout=w or None))


def take_deadline(wait: Optional[Seconds], timeout: Optional[Seconds], client_timeout: Optional[float]) -> Optional[float]:
    """A Take's call deadline: ``timeout``, else the wait plus the client's
    call timeout (None: no deadline)."""
    t = seconds(timeout)
    if t is not None:
        return t
    return None if client_timeout is None else (seconds(wait) or 0.0) + client_timeout


def decision_from(resp: ratelimit_pb2.TakeResponse) -> RateDecision:
    return RateDecision(
        allowed=resp.allowed,
        remaining=resp.remaining,
        retry_after=resp.retry_after.ToTimedelta().total_seconds(),
        reset_after=resp.reset_after.ToTimedelta().total_seconds(),
        limit=resp.limit,
        degraded=resp.degraded,
        cached=resp.cached,
    )


def key_of(key: KeyArg, args: Any, kwargs: Any) -> str:
    return key(*args, **kwargs) if callable(key) else key


def refused(limiter: str, key: str, cost: int, d: RateDecision) -> RateLimited:
    return RateLimited(limiter, key, max(cost, 1), d.retry_after, d)


def rate_limited(
    client: "Client", limiter: str, key: KeyArg, cost: int, wait: Optional[Seconds], timeout: Optional[Seconds]
) -> Callable[[F], F]:
    """The decorator of :meth:`Client.rate_limited`."""

    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_of(key, args, kwargs)
                d = await asyncio.to_thread(client.take, limiter, k, cost, wait=wait, timeout=timeout)
                if not d.allowed:
                    raise refused(limiter, k, cost, d)
                return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key_of(key, args, kwargs)
            d = client.take(limiter, k, cost, wait=wait, timeout=timeout)
            if not d.allowed:
                raise refused(limiter, k, cost, d)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
