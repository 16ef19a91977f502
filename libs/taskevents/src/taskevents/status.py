"""What a subscription handler answers Dapr, from one enum: an unknown status string makes
Dapr retry forever (components-contrib pubsub/responses.go)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# A service that dead-letters a message itself (to say why; Dapr's own dead-lettering on
# DROP carries no reason) puts the reason in this Kafka header; the audit log files it.
DEAD_LETTER_REASON_HEADER = "dead-letter-reason"


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
