"""The protocol's version and named limits, each with its reason. The domain-separation
labels are in `imsg.crypto.labels` (and docs/PROTOCOL.md §1's label table).
"""

WIRE_VERSION = 1

# PQXDH's 32 0xFF bytes before the DH outputs (Signal PQXDH §2.2: for X25519 the
# discontinuity bytes keep the KDF input from ever equalling an XEdDSA/other input).
PQXDH_F = b"\xff" * 32

# --- limits (each with its reason) ---

# Most messages one chain may skip in one step. A header n beyond this is rejected
# before any KDF work, so a forged n = 2^32-1 cannot burn CPU (SECURITY-TESTS 19).
# libsignal allows 25,000; a terminal messenger whose relay holds mail 30 days does not
# need more than a few thousand, and a smaller cap bounds the work per forged header.
MAX_FORWARD_JUMPS = 2_000

# Most skipped message keys kept per session, across all chains; oldest evicted first.
# 100 DH ratchets each leaving 50 gaps still leave at most this many (SECURITY-TESTS 19).
MAX_MESSAGE_KEYS = 2_000

# A skipped key older than this is dropped: the relay holds undelivered mail 30 days,
# so a message older than that can no longer arrive.
MAX_SKIPPED_KEY_AGE_MS = 30 * 24 * 3600 * 1000

# Previous session states kept per peer device, so messages in flight across a
# simultaneous re-initiation still decrypt (libsignal keeps 40; two people racing to
# start a session need one or two).
MAX_PREVIOUS_SESSIONS = 5

# Message contents are padded to a multiple of this many bytes (Signal pads to 160),
# so ciphertext length reveals only a coarse size.
PAD_BLOCK = 160

# Prekeys: publish this many one-time keys at a time, refill when fewer remain.
ONE_TIME_PREKEY_BATCH = 100
ONE_TIME_PREKEY_REFILL_BELOW = 20

# Ed25519 signed prekeys are rotated weekly, and old ones kept 30 days (mail in flight).
SIGNED_PREKEY_ROTATE_MS = 7 * 24 * 3600 * 1000
SIGNED_PREKEY_KEEP_MS = 30 * 24 * 3600 * 1000

# Devices per account (a phone, a tablet, a laptop, a watch... with room to spare).
MAX_DEVICES = 10

# Sealed envelopes are padded to one of these total sizes (bytes), so the relay sees the
# size class only: powers of two from 2 KiB (a prekey message with its certificate fits in
# 4 KiB, a plain one in 2 KiB) to 64 KiB, then the relay's 96 KiB envelope cap.
SEALED_BUCKETS = (2048, 4096, 8192, 16384, 32768, 65536, 98304)

# --- profiles (name and photo, docs/PROTOCOL.md §6c) ---

# A profile name is at most this many UTF-8 bytes; it is padded to a fixed block, so every
# name has the same ciphertext length.
PROFILE_NAME_MAX_BYTES = 254
PROFILE_NAME_BLOCK = 256  # u16 length + name + zero padding

# A profile photo is at most 512 KiB (a contact photo is shown small; 512 KiB holds a
# 1024x1024 JPEG) and padded to the next power of two, at least 4 KiB: the ciphertext tells
# only which of 8 buckets (4 KiB .. 512 KiB) the photo falls in.
PROFILE_PHOTO_MAX = 512 * 1024
PROFILE_PHOTO_MIN_BUCKET = 4 * 1024
