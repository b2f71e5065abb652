"""One root error; the docstring is the user-facing message.

As in h11, errors say who is to blame: `LocalProtocolError` (we misused the API or our
state does not allow it) versus `RemoteProtocolError` (the peer or the relay sent something
wrong). Every failure to decrypt or authenticate peer data is one uniform
`DecryptionError`, whatever byte was wrong (no format oracle, SECURITY-TESTS 1 and 15).
"""


class ProtocolError(Exception):
    """protocol error"""

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__class__.__doc__ or "").strip())


class LocalProtocolError(ProtocolError):
    """the operation is not possible in the current state"""


class RemoteProtocolError(ProtocolError):
    """the peer sent something invalid"""


class DecodeError(RemoteProtocolError):
    """malformed data: it does not follow the wire format"""


class DecryptionError(RemoteProtocolError):
    """failed to decrypt and authenticate message: it may be corrupted or tampered with"""


class DowngradeError(DecryptionError):
    """message refused: the peer uses the PQ ratchet in this session, and this one lacks it"""


class DuplicateMessageError(RemoteProtocolError):
    """message already received (replay or redelivery)"""


class UnknownPreKeyError(DuplicateMessageError):
    """prekey message names an unknown or used prekey"""


class TooFarAheadError(RemoteProtocolError):
    """message skips more keys than allowed: rejected without deriving them"""


class UntrustedIdentityError(RemoteProtocolError):
    """identity not signed by the pinned account key: refusing to trust it"""


class NoSessionError(LocalProtocolError):
    """no session with that device"""


class CertificateError(RemoteProtocolError):
    """sender certificate rejected: not signed by a trusted relay key, expired, or not the sender's"""
