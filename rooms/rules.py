"""Business rules checked before a message is sequenced (pure functions, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

PRIVILEGED_KINDS = frozenset({"gift", "superchat", "system"})
SENDER_ROLES_FOR_PRIVILEGED = frozenset({"streamer", "admin"})


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    code: str = ""
    message: str = ""
    retry_after_ms: int | None = None


ACCEPT = Verdict(ok=True)


def check_message(*, role: str, kind: str, text: str, max_text_chars: int) -> Verdict:
    if kind not in {"danmaku"} | PRIVILEGED_KINDS:
        return Verdict(False, "bad_request", f"unknown kind {kind!r}")
    if kind in PRIVILEGED_KINDS and role not in SENDER_ROLES_FOR_PRIVILEGED:
        return Verdict(False, "unauthorized", f"only a streamer or admin may send {kind}")
    if len(text) > max_text_chars:
        return Verdict(False, "too_long", f"text longer than {max_text_chars} characters")
    return ACCEPT
