"""Every domain-separation label of the client, in one place: HKDF infos, AEAD associated
data, signature contexts, HPKE infos and hash prefixes. Each context that derives a key,
builds associated data or signs gets its own label, so a key, ciphertext or signature made
for one context is never accepted in another (SECURITY-TESTS 6, 10).

Each constant appears word for word in the label table of docs/PROTOCOL.md §1, next to the
relay's own constants where the relay computes the same thing; tests/unit/test_labels.py
checks that the table, this module and the relay agree, and fails on a `b"imsg/..."`
literal anywhere else in the client.

Why here, at the bottom of the import graph, and not in `imsg.protocol`: the attachment
stream cipher (`imsg.crypto.stream`) derives its key with a label, and crypto imports
nothing else of ours; from here protocol, store and crypto alike import their labels.

The values are wire format: changing one breaks every peer and every stored record.
"""

# --- sessions and messages (§4, §5, §6) ---
LABEL_PQXDH = b"imsg/v1/pqxdh X25519 ML-KEM-768 SHA-256"  # HKDF info of the session key
LABEL_ROOT = b"imsg/v1/ratchet/root"  # HKDF info of the root KDF
LABEL_ROOT_PQ = b"imsg/v1/ratchet/root-pq"  # HKDF info prefix of the root KDF on a PQ step
LABEL_MESSAGE_KEYS = b"imsg/v1/ratchet/message-keys"  # HKDF info: message key -> AEAD key, nonce
LABEL_MESSAGE_AD = b"imsg/v1/ratchet/ad"  # associated data of a ratchet message
LABEL_CONTENT_KEY = b"imsg/v1/content"  # HKDF info: content key -> AEAD key, nonce
LABEL_CONTENT_AD = b"imsg/v1/content/ad"  # associated data of the content ciphertext

# --- accounts, devices and prekeys (§2, §3, §6a) ---
LABEL_ACCOUNT_ID = b"imsg/v1/account-id"  # hash prefix: account key -> account id
LABEL_SAFETY_NUMBER = b"imsg/v1/safety-number"  # hash prefix of safety numbers and fingerprints
LABEL_DEVICE_LIST = b"imsg/v1/sig/device-list"  # signature context: the account key signs its devices
LABEL_SIGNED_PREKEY = b"imsg/v1/sig/signed-prekey"  # signature context: a device signs its X25519 prekey
LABEL_KEM_PREKEY = b"imsg/v1/sig/kem-prekey"  # signature context: a device signs its ML-KEM prekey
LABEL_DEVICE_NAME = b"imsg/v1/device-name"  # HKDF info: account key -> device-name key
LABEL_PROVISIONING = b"imsg/v1/provisioning"  # linking: HKDF info (|| "/to-" || dir) and AD (|| channel)

# --- attachments (§6b) ---
LABEL_ATTACHMENT = b"imsg/v1/attachment"  # HKDF info: attachment key -> stream key

# --- profiles (§6c) ---
LABEL_PROFILE_ID = b"imsg/v1/profile/id"  # HKDF info (|| account id): the profile key's id
LABEL_PROFILE_KEY = b"imsg/v1/profile/key"  # HKDF info (|| account id): the profile encryption key
LABEL_PROFILE_AD = b"imsg/v1/profile/ad"  # associated data of the profile blob

# --- backups (§6d) ---
LABEL_BACKUP_KEY = b"imsg/v1/backup/key"  # HKDF info: recovery secret -> backup key
LABEL_BACKUP_ACCESS = b"imsg/v1/backup/access"  # HKDF info: recovery secret -> access token
LABEL_BACKUP_AD = b"imsg/v1/backup/ad"  # associated data of the backup
LABEL_RECOVERY_CHECKSUM = b"imsg/v1/backup/recovery-code-checksum"  # hash prefix of the code's checksum
LABEL_RESTORE_DEVICE = b"imsg/v1/sig/restore-device"  # signature context: the account key enrols a device

# --- sealed sender (§6e) ---
LABEL_SEALED_DEVICE_KEY = b"imsg/v1/sealed/device-key"  # HKDF info: identity key -> HPKE seed
LABEL_SEALED_ENVELOPE = b"imsg/v1/sealed/envelope"  # HPKE info (|| recipient)
LABEL_ACCESS_KEY = b"imsg/v1/sealed/access-key"  # HKDF info: profile key -> unidentified-access key
LABEL_SENDER_CERTIFICATE = b"imsg/v1/sig/sender-certificate"  # signature context of the relay's certificates
LABEL_RELAY_KEY = b"imsg/v1/sig/relay-key"  # signature context: a relay key endorses its successor

# --- reachable handles and discovery (§8a) ---
LABEL_TAG = b"imsg/v1/discovery-tag"  # hash prefix: OPRF output -> a handle's tag
LABEL_RECORD_KEY = b"imsg/v1/discovery-record-key"  # hash prefix: OPRF output -> record key
LABEL_RECORD = b"imsg/v1/discovery-record"  # associated data (|| tag) of a discovery record
LABEL_HANDLE_LABEL = b"imsg/v1/handle-label"  # HKDF info and AD: a handle sealed for the account's devices
LABEL_DISCOVERY_KEY = b"imsg/v1/sig/discovery-key"  # signature context: the sealed-sender key signs the VOPRF key

# --- local storage (docs/STORAGE.md) ---
LABEL_KEY_CHECK = b"imsg/v1/storage-key-check"  # HMAC message: tells the right storage key from a stale one
