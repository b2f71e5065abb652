"""Wake-ups for long polls: the `Push` interface, in-process (one worker) and Redis pub/sub
(many workers, in push/redis.py, imported only when configured)."""

from imsg_relay.push.base import Mailbox, Push
from imsg_relay.push.inprocess import InProcessPush

__all__ = ["InProcessPush", "Mailbox", "Push"]
