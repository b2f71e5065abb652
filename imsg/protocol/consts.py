"""Domain-separation labels and named limits. Each label appears word for word in
docs/PROTOCOL.md. Every context that derives a key or signs gets its own label, so a
ciphertext or signature from one context is never accepted in another (SECURITY-TESTS 6, 10).
"""

WIRE_VERSION = 1

# --- key derivation (HKDF info strings) ---
LABEL_PQXDH = b"imsg/v1/pqxdh X25519 ML-KEM-768 SHA-256"
LABEL_ROOT = b"imsg/v1/ratchet/root"
LABEL_MESSAGE_KEYS = b"imsg/v1/ratchet/message-keys"
LABEL_CONTENT_KEY = b"imsg/v1/content"

LABEL_DEVICE_NAME = b"imsg/v1/device-name"
LABEL_PROVISIONING = b"imsg/v1/provisioning"
LABEL_SYNC = b"imsg/v1/sync"
# Sealed sender (§6e): a device's HPKE seed from its identity key, the HPKE info of the
# sealed layer, and the unidentified-access key from the profile key.
LABEL_SEALED_DEVICE_KEY = b"imsg/v1/sealed/device-key"
LABEL_SEALED_ENVELOPE = b"imsg/v1/sealed/envelope"
LABEL_ACCESS_KEY = b"imsg/v1/sealed/access-key"

# --- associated data ---
LABEL_MESSAGE_AD = b"imsg/v1/ratchet/ad"
LABEL_CONTENT_AD = b"imsg/v1/content/ad"

# --- signature contexts ---
LABEL_DEVICE_LIST = b"imsg/v1/sig/device-list"
LABEL_SIGNED_PREKEY = b"imsg/v1/sig/signed-prekey"
LABEL_KEM_PREKEY = b"imsg/v1/sig/kem-prekey"
LABEL_SENDER_CERTIFICATE = b"imsg/v1/sig/sender-certificate"  # by the relay
LABEL_RELAY_KEY = b"imsg/v1/sig/relay-key"  # a relay key endorsing its successor

# --- identifiers and fingerprints ---
LABEL_ACCOUNT_ID = b"imsg/v1/account-id"
LABEL_SAFETY_NUMBER = b"imsg/v1/safety-number"

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

# A sender certificate is fetched again after this long on our clock (they live 24 hours
# on the relay's), so clock skew never makes a client send an expired one.
SENDER_CERTIFICATE_REFRESH_MS = 3600 * 1000
# --- profiles (name and photo, docs/PROTOCOL.md §6c) ---
LABEL_PROFILE_ID = b"imsg/v1/profile/id"
LABEL_PROFILE_KEY = b"imsg/v1/profile/key"
LABEL_PROFILE_AD = b"imsg/v1/profile/ad"

# A profile name is at most this many UTF-8 bytes; it is padded to a fixed block, so every
# name has the same ciphertext length.
PROFILE_NAME_MAX_BYTES = 254
PROFILE_NAME_BLOCK = 256  # u16 length + name + zero padding

# A profile photo is at most 512 KiB (a contact photo is shown small; 512 KiB holds a
# 1024x1024 JPEG) and padded to the next power of two, at least 4 KiB: the ciphertext tells
# only which of 8 buckets (4 KiB .. 512 KiB) the photo falls in.
PROFILE_PHOTO_MAX = 512 * 1024
PROFILE_PHOTO_MIN_BUCKET = 4 * 1024
