"""What a subscription handler answers Dapr, from one enum: an unknown status string makes
Dapr retry forever (components-contrib pubsub/responses.go)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# A service that dead-letters a message itself (to say why and who; Dapr's own
# dead-lettering names neither) puts the reason and its app id in these Kafka headers; the
# audit log files them (taskevents.dead_letters).
DEAD_LETTER_REASON_HEADER = "dead-letter-reason"
DEAD_LETTER_SOURCE_HEADER = "dead-letter-source"


class DaprStatus(StrEnum):
    SUCCESS = "SUCCESS"  # the effect is durable
    RETRY = "RETRY"  # transient trouble: Dapr retries with back-off, then dead-letters
    DROP = "DROP"  # can never succeed: Dapr dead-letters it at once


@dataclass(frozen=True, slots=True)
class Outcome:
    status: DaprStatus
    reason: str | None = None

    @classmethod
    def success(cls, reason: str | None = None) -> Outcome:
        return cls(DaprStatus.SUCCESS, reason)

    @classmethod
    def retry(cls, reason: str) -> Outcome:
        return cls(DaprStatus.RETRY, reason)

    @classmethod
    def drop(cls, reason: str) -> Outcome:
        return cls(DaprStatus.DROP, reason)

    def response(self) -> dict[str, str]:
        """The body of the HTTP answer to daprd."""
        return {"status": self.status.value}
