"""Generators and scorers that Ray restarts (a lost node, a killed process) rejoin at the driver's
current model version.

Ray restarts such an actor (`max_restarts`) by running its constructor again, so it comes back with
its constructor's weights or reward model, not the version the driver published since. Ray also
retries the calls that were running on it (`max_task_retries`), and a retried call would then draw
or score with the old model. So the driver names, with every call, the version it expects
(`expect_version`); an actor holding another raises `StaleVersionError` instead of working. The
driver keeps, in an `ActorGroup`, the version it last set on the group's actors, and on that error
sets it again on the restarted actor (`ActorGroup.resync`) and submits the failed call again. A
sample therefore always carries the version that drew it, and that is the published one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ray

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 4  # runs of one call before its error is final (a restart costs one)


def restart_options(max_restarts: int) -> dict[str, int]:
    """Actor options: restart up to `max_restarts` times (-1: always) and retry the calls a restart
    interrupted for as long as the actor can come back. Retried calls may run twice, which is safe:
    generation and scoring are deterministic and the buffer ignores sample ids it holds."""
    if max_restarts < -1:
        raise ValueError(f"max_restarts must be >= -1, got {max_restarts}")
    return {"max_restarts": max_restarts, "max_task_retries": -1 if max_restarts else 0}


class StaleVersionError(RuntimeError):
    """An actor was asked to work at a version it does not hold: Ray restarted it from its
    constructor's arguments since the driver last set one."""

    def __init__(self, role: str, held: str | None, expected: str) -> None:
        super().__init__(role, held, expected)  # the args rebuild it when Ray pickles it
        self.role, self.held, self.expected = role, held, expected

    def __str__(self) -> str:
        return (f"this {self.role} holds version {self.held!r}, not the expected {self.expected!r} "
                "(restarted from its constructor's arguments?); set it through ActorGroup.update")


def check_version(role: str, held: str | None, expected: str | None) -> None:
    """Raise StaleVersionError unless `held` is `expected` (None: the caller expects nothing)."""
    if expected is not None and held != expected:
        raise StaleVersionError(role, held, expected)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: Ray's task errors (`cause`), then Python's chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen and len(seen) < 16:
        seen.add(id(error))
        yield error
        error = getattr(error, "cause", None) or error.__cause__


def stale_role(error: BaseException) -> str | None:
    """The role of the actor whose stale version failed this call, if that is what failed it."""
    found = next((e for e in _causes(error) if isinstance(e, StaleVersionError)), None)
    return None if found is None else found.role


def is_recoverable(error: BaseException) -> bool:
    """Whether a call failed because an actor was lost or restarted (or a result was lost with its
    node), so that it may succeed once submitted again, rather than for an error of its own."""
    lost = (StaleVersionError, ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
    return any(isinstance(e, lost) for e in _causes(error))


class ActorGroup(Sequence):
    """Like actors (the generators, or the scorers) and the version the driver last set on all of
    them, so that one Ray restarted can be brought back to it before it gets work again.

    It reads as the list of handles. `setter` is the actors' method that takes (version, location);
    `version` is what the constructors gave them (None: the driver expects no version)."""

    def __init__(self, actors: Sequence, *, role: str, setter: str, version: str | None,
                 timeout_s: float = 900.0) -> None:
        self._actors = list(actors)
        self.role, self.setter, self.timeout_s = role, setter, timeout_s
        self.initial = self.version = version
        self.location: Any = None  # where `version` was loaded from; None: the constructors' own

    def __getitem__(self, i: int | slice) -> Any:
        return self._actors[i]

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator:
        return iter(self._actors)

    def __repr__(self) -> str:
        return f"ActorGroup({len(self)} {self.role}s at {self.version!r})"

    def update(self, version: str, location: Any) -> list:
        """Set (version, location) on every actor, then remember it for actors restarted later.
        A call interrupted by a restart is retried by Ray on the new actor."""
        out = ray.get([getattr(a, self.setter).remote(version, location) for a in self._actors])
        self.version, self.location = version, location
        return out

    def resync(self, i: int) -> None:
        """Wait until actor i answers (Ray holds calls while it restarts) and set the group's
        version on it again if it came back with its constructor's."""
        actor = self._actors[i]
        try:
            held = ray.get(actor.version.remote(), timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{self.role} {i} did not answer within {self.timeout_s:.0f} s") from None
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"{self.role} {i} is dead and will not be restarted (its restarts are "
                               f"used up, or it has none: rollout.max_restarts): {e}") from e
        if self.version is None or held == self.version:
            return
        if held != self.initial or self.location is None:
            raise RuntimeError(
                f"{self.role} {i} holds version {held!r} but the driver set {self.version!r}; set versions "
                "through ActorGroup.update, not on the actors one by one")
        log.warning("%s %d was restarted (back at %s); setting %s again", self.role, i, held, self.version)
        ray.get(getattr(actor, self.setter).remote(self.version, self.location), timeout=self.timeout_s)


def generator_group(actors: Sequence, version: str | None, timeout_s: float = 900.0) -> ActorGroup:
    """Generator actors as a group; a restarted one gets `update_weights` again."""
    return ActorGroup(actors, role="generator", setter="update_weights", version=version, timeout_s=timeout_s)


def scorer_group(actors: Sequence, version: str | None, timeout_s: float = 900.0) -> ActorGroup:
    """Scorer actors as a group; a restarted one gets `update_reward_model` again."""
    return ActorGroup(actors, role="scorer", setter="update_reward_model", version=version, timeout_s=timeout_s)


def as_group(actors: Sequence, make: Callable[[Sequence, str | None], ActorGroup]) -> ActorGroup:
    """`actors` if it is a group; a plain list becomes one (`generator_group` or `scorer_group`)
    that expects no version."""
    return actors if isinstance(actors, ActorGroup) else make(actors, None)


def call_each(group: ActorGroup, chunks: Sequence[T], submit: Callable[[Any, T], ray.ObjectRef]) -> list:
    """`submit(actor, chunk)` for every chunk, round-robin over the group; the results in chunk
    order. A call failed by a lost or restarted actor runs again once that actor is resynced."""
    if not group:
        raise ValueError(f"no {group.role}s to call")
    refs = {submit(group[i % len(group)], c): i for i, c in enumerate(chunks)}
    results: list = [None] * len(chunks)
    attempts = [1] * len(chunks)
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        i = refs.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except Exception as e:
            if not is_recoverable(e) or attempts[i] >= MAX_ATTEMPTS:
                raise
            attempts[i] += 1
            a = i % len(group)
            log.warning("%s %d lost call %d (%s); resyncing it and calling again", group.role, a, i,
                        type(e).__name__)
            group.resync(a)
            refs[submit(group[a], chunks[i])] = i
    return results
