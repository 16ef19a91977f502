"""Consumer lag: how far each group's committed offset is behind the end of each
partition, and which groups look stalled (lag growing while nothing is delivered)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class GroupPartition:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class PartitionLag:
    key: GroupPartition
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Messages not yet consumed. A group that never committed on the partition is
        counted from the start of the partition."""
        committed = self.committed if self.committed is not None and self.committed >= 0 else 0
        return max(self.end - committed, 0)


@dataclass(frozen=True, slots=True)
class LagSample:
    at: float
    partitions: tuple[PartitionLag, ...] = ()
    members: Mapping[str, int] = field(default_factory=dict)  # active consumers per group

    def by_group(self) -> dict[tuple[str, str], int]:
        """Total lag per (group, topic)."""
        totals: dict[tuple[str, str], int] = {}
        for item in self.partitions:
            key = (item.key.group, item.key.topic)
            totals[key] = totals.get(key, 0) + item.lag
        return totals


def partition_lags(
    group: str,
    committed: Mapping[tuple[str, int], int],
    ends: Mapping[tuple[str, int], int],
    topics: Iterable[str],
) -> list[PartitionLag]:
    """The lag of one group on every partition of `topics` it has committed on at least
    once (a group that never read a topic is not behind on it)."""
    wanted = set(topics)
    read = {topic for topic, _ in committed if topic in wanted}
    return [
        PartitionLag(
            GroupPartition(group, topic, partition), committed.get((topic, partition)), end
        )
        for (topic, partition), end in sorted(ends.items())
        if topic in read
    ]


@dataclass(frozen=True, slots=True)
class Stall:
    group: str
    topic: str
    lag_before: int
    lag_now: int
    deliveries_per_second: float | None
    members: int | None

    @property
    def reason(self) -> str:
        if self.members == 0:
            return "no consumer in the group while its lag grows"
        return "lag grows while its subscriber delivers nothing"


def app_of_group(group: str, app_ids: Iterable[str]) -> str | None:
    """The app a group belongs to: the group is the app-id, or `<app-id>-<suffix>` (a
    websocket replica, a test session); the longest matching app-id wins."""
    matches = [a for a in app_ids if group == a or group.startswith(f"{a}-")]
    return max(matches, key=len) if matches else None


def detect_stalls(
    previous: LagSample | None,
    current: LagSample,
    delivered_per_second: Mapping[tuple[str, str], float],
) -> list[Stall]:
    """Groups whose lag on a topic grew between two samples while their app delivered
    nothing from that topic (`delivered_per_second` per (group, topic); a group without an
    entry is unknown and counts as delivering nothing), or that have no consumer at all."""
    if previous is None:
        return []
    before = previous.by_group()
    stalls = []
    for key, lag_now in sorted(current.by_group().items()):
        lag_before = before.get(key)
        if lag_before is None or lag_now <= lag_before:
            continue
        rate = delivered_per_second.get(key)
        members = current.members.get(key[0])
        if (rate is None or rate == 0) or members == 0:
            stalls.append(Stall(key[0], key[1], lag_before, lag_now, rate, members))
    return stalls
