"""The errors a `Client` raises. Each class carries its stable code and exit code; the CLI
turns them into output in one place (cli/output.py). The docstring is the default message.

Exit codes (STYLE.md): 0 ok, 1 bug, 2 usage, 3 local state, 4 relay unreachable
(retryable), 5 relay refused, 6 security failure (never downgraded to a warning), 130
interrupted.
"""

from __future__ import annotations

from typing import Any


class ImsgError(Exception):
    """imsg failed"""

    code = "error"
    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str | None = None, *, hint: str | None = None, **details: Any):
        super().__init__(message or (self.__class__.__doc__ or "").strip())
        if hint is not None:
            self.hint = hint
        # extra fields of the JSON error: ours, or those the relay sent with its error
        # (unvalidated, hence Any: a reader checks a field before using it, as with any relay JSON)
        self.details = details


class UsageError(ImsgError):
    """invalid arguments"""

    code, exit_code = "usage", 2


class InvalidHandleError(UsageError):
    """not a valid handle: use an e-mail address or an E.164 phone number such as +15551234567"""

    code = "invalid_handle"


class LocalStateError(ImsgError):
    """this home is not in a state that allows the operation"""

    code, exit_code = "local_state", 3


class NoAccountError(LocalStateError):
    """no account in this home"""

    code = "no_account"
    hint = "create one with: imsg init HANDLE"


class AccountExistsError(LocalStateError):
    """this home already has an account"""

    code = "account_exists"
    hint = "use another --home for a second account"


class UnknownContactError(LocalStateError):
    """no conversation with that handle"""

    code = "unknown_contact"


class RelayUnavailableError(ImsgError):
    """relay unreachable"""

    code, exit_code = "relay_unavailable", 4
    hint = "check --relay / IMSG_RELAY and that the relay is running; retrying is safe"


class RelayRefusedError(ImsgError):
    """the relay refused the request"""

    code, exit_code = "relay_refused", 5

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 0,
        relay_code: str = "",
        hint: str | None = None,
        **details: Any,
    ):
        super().__init__(message, hint=hint, **details)
        self.status = status
        self.relay_code = relay_code or "relay_refused"
        self.code = self.relay_code


class NotRegisteredError(RelayRefusedError):
    """that handle is not registered with imsg"""


class SealedOnlyError(RelayRefusedError):
    """sealed-only delivery is on and this message cannot go sealed: it is kept, not sent"""

    hint = (
        "it is sent once they share their profile with you (or allow sealed messages from anyone), "
        "or turn sealed-only off: imsg sealed only off"
    )

    def __init__(self, message: str | None = None, *, hint: str | None = None, **details: Any):
        super().__init__(message, status=401, relay_code="sealed_only", hint=hint, **details)


class SealedRefusedError(RelayRefusedError):
    """the relay refused a sealed send with the access key we hold for the recipient: the
    message is kept, not sent identified (the relay's word alone never downgrades it)"""

    hint = (
        "they may have rotated their profile key (it comes with their next message), or the relay "
        "is misbehaving; the message is retried on the next send or receive"
    )

    def __init__(self, message: str | None = None, *, hint: str | None = None, **details: Any):
        super().__init__(message, status=401, relay_code="sealed_refused", hint=hint, **details)


class InsecureRelayError(UsageError):
    """refusing plain http to a relay that is not on this machine"""

    code = "insecure_relay"
    hint = "use https://, or pass --insecure if you really mean it"


class SecurityError(ImsgError):
    """security check failed"""

    code, exit_code = "security", 6


class UntrustedIdentityError(SecurityError):
    """the relay served keys that the account key does not sign"""

    code = "untrusted_identity"


class IdentityChangedError(SecurityError):
    """a contact's safety number changed: message held, not sent"""

    code = "identity_changed"
