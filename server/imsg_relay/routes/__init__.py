"""The route functions, grouped by resource, and OPERATIONS: the one table of the API.

Each entry names its method, path, route function, schemas and parameters; app.py builds
the router from it, operation.Call validates each request against it, and openapi.py
builds /openapi.json from it, so none of the three can drift from the others.

Route modules: accounts (and devices), keys (prekeys), messages (mailboxes), provisioning
(device linking), blobs (attachments), reachable (the caller's own handles), discovery
(OPRF lookups), sealed (sealed sender), profiles, backups (and restore), privacy (the
report).
"""

from __future__ import annotations

from imsg_relay import schema
from imsg_relay.operation import Operation, Param
from imsg_relay.privacy import PrivacyReport
from imsg_relay.routes import (
    accounts,
    backups,
    blobs,
    discovery,
    keys,
    messages,
    privacy,
    profiles,
    provisioning,
    reachable,
    sealed,
)

_ACCOUNT_PARAM = (("account_id", schema.AccountId),)
_DEVICE_PARAM = (("device_id", schema.DeviceId),)
_CHANNEL_PARAM = (("channel", schema.ChannelId),)
_BOX_PARAMS = (("channel", schema.ChannelId), ("box", schema.Box))
_BLOB_PARAM = (("blob_id", schema.BlobId),)
_PART_PARAMS = (("blob_id", schema.BlobId), ("index", schema.PartIndex))
_WAIT = Param("wait", schema.Wait, "seconds to hold the request while the mailbox is empty", 0)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/health", accounts.health, "relay liveness", 200, schema.Health, auth=False),
    Operation(
        "POST",
        "/v1/accounts",
        accounts.register,
        "register an account and its first device",
        201,
        schema.DeviceCreated,
        schema.RegisterRequest,
        auth=False,
        errors=(409, 429),
    ),
    Operation(
        "GET",
        "/v1/accounts/{account_id}",
        accounts.get_account,
        "an account's key, signed device list and devices; no authentication (public data)",
        200,
        schema.Account,
        auth=False,
        errors=(404, 429),
        path_params=_ACCOUNT_PARAM,
    ),
    # Reachable handles (blinded) and private discovery: routes in reachable.py.
    Operation(
        "POST",
        "/v1/handles",
        reachable.add_handle,
        "claim a handle for the caller's account; a verifying relay sends it a code",
        200,
        reachable.Handle,
        reachable.HandleRequest,
        errors=(409, 502),
    ),
    Operation(
        "POST",
        "/v1/handles/verify",
        reachable.verify_handle,
        "confirm a pending handle with the code it received",
        200,
        reachable.Handle,
        reachable.VerifyHandleRequest,
        errors=(403, 404, 409),
    ),
    Operation(
        "GET", "/v1/handles", reachable.list_handles, "the caller's account's handles (blinded)", 200, reachable.Handles
    ),
    Operation(
        "PATCH",
        "/v1/handles/{handle_id}",
        reachable.update_handle,
        "stop or resume receiving at a handle, or replace its sealed label",
        200,
        reachable.Handle,
        reachable.UpdateHandleRequest,
        errors=(404,),
        path_params=(("handle_id", schema.HandleId),),
    ),
    Operation(
        "DELETE",
        "/v1/handles/{handle_id}",
        reachable.remove_handle,
        "remove a handle from the caller's account",
        200,
        reachable.HandleRemoved,
        errors=(404,),
        path_params=(("handle_id", schema.HandleId),),
    ),
    Operation(
        "GET",
        "/v1/discovery/key",
        discovery.discovery_key,
        "the relay's VOPRF public key, signed by its current sealed-sender key",
        200,
        discovery.DiscoveryKeyInfo,
        auth=False,
    ),
    Operation(
        "POST",
        "/v1/discovery/evaluate",
        discovery.evaluate,
        "RFC 9497 VOPRF (mode 0x01) evaluation of blinded elements with one batched proof"
        " (rate-limited per account; nothing is recorded)",
        200,
        discovery.Evaluated,
        discovery.EvaluateRequest,
        errors=(429,),
    ),
    Operation(
        "POST",
        "/v1/discovery/buckets",
        discovery.buckets,
        "the blinded entries of discovery buckets, by tag prefix (no credential; rate-limited"
        " relay-wide; nothing is recorded)",
        200,
        discovery.Buckets,
        discovery.BucketsRequest,
        auth=False,
        errors=(409, 429),
    ),
    Operation(
        "PUT",
        "/v1/devices/{device_id}",
        accounts.add_device,
        "add a device to the caller's account",
        201,
        schema.DeviceCreated,
        schema.AddDeviceRequest,
        errors=(409,),
        path_params=_DEVICE_PARAM,
    ),  # device_exists, too_many_devices
    Operation(
        "DELETE",
        "/v1/devices/{device_id}",
        accounts.remove_device,
        "remove a device of the caller's account, with its keys and mailbox",
        200,
        schema.DeviceRemoved,
        schema.RemoveDeviceRequest,
        errors=(404,),
        path_params=_DEVICE_PARAM,
        request_required=False,
    ),
    Operation(
        "PUT", "/v1/keys", keys.put_keys, "publish this device's prekeys", 200, schema.KeyCounts, schema.KeysRequest
    ),
    Operation("GET", "/v1/keys/count", keys.key_counts, "one-time prekeys held for this device", 200, schema.KeyCounts),
    Operation(
        "GET",
        "/v1/keys/{account_id}",
        keys.get_bundles,
        "prekey bundles, one per device; one-time keys are served once. Authorized by the "
        "account's Unidentified-Access-Key (no credential), or by a bearer token",
        200,
        schema.Bundles,
        auth=False,
        errors=(401, 404, 429),
        path_params=_ACCOUNT_PARAM,
        query=(Param("device_id", schema.DeviceId, "only this device"),),
        headers=(
            (
                "Unidentified-Access-Key",
                {"type": "string", "format": "byte"},
                "base64 of the account's 16-byte unidentified access key (instead of a bearer token)",
            ),
        ),
    ),
    Operation(
        "PUT",
        "/v1/messages/{account_id}",
        messages.send,
        "store an envelope for every device of an account",
        200,
        schema.SendResult,
        schema.SendRequest,
        errors=(404, 409, 429),
        path_params=_ACCOUNT_PARAM,
    ),
    Operation(
        "GET",
        "/v1/messages",
        messages.fetch,
        "this device's mailbox, oldest first",
        200,
        schema.Messages,
        query=(_WAIT, Param("limit", schema.FetchLimit, "most envelopes to return", 100)),
    ),
    Operation(
        "POST", "/v1/messages/ack", messages.ack, "delete delivered envelopes", 200, schema.AckResult, schema.AckRequest
    ),
    # Device linking. Only the account's side authenticates: the new device has no
    # credential yet, and holding the channel id (shown to it as a pairing code) is its
    # capability. The relay sees opaque bytes in two boxes, each read once.
    Operation(
        "POST",
        "/v1/provisioning",
        provisioning.open_channel,
        "open a provisioning channel (10 minutes) to link a new device",
        201,
        schema.Channel,
        schema.ChannelRequest,
        errors=(409,),
        request_required=False,
        links=tuple(
            (name, target, {"channel": "$response.body#/channel"})
            for name, target in (
                ("PutMessage", "put_provisioning"),
                ("TakeMessage", "take_provisioning"),
                ("Close", "close_channel"),
            )
        ),
    ),
    Operation(
        "PUT",
        "/v1/provisioning/{channel}/{box}",
        provisioning.put_provisioning,
        "queue an opaque message in a channel's box; no authentication, the channel id is the capability",
        200,
        schema.ProvisioningQueued,
        schema.ProvisioningPut,
        auth=False,
        errors=(404, 429),
        path_params=_BOX_PARAMS,
    ),
    Operation(
        "GET",
        "/v1/provisioning/{channel}/{box}",
        provisioning.take_provisioning,
        "the oldest message of a channel's box, deleted as it is served (long poll); no authentication",
        200,
        schema.ProvisioningMessage,
        auth=False,
        errors=(404, 429),
        path_params=_BOX_PARAMS,
        query=(_WAIT._replace(description="seconds to hold the request while the box is empty"),),
    ),
    Operation(
        "DELETE",
        "/v1/provisioning/{channel}",
        provisioning.close_channel,
        "close a provisioning channel of the caller's account and delete its messages",
        200,
        schema.ChannelClosed,
        errors=(404,),
        path_params=_CHANNEL_PARAM,
    ),
    # Attachment blobs: opaque ciphertext, uploaded in parts (resumable), downloaded with
    # ranges by anyone holding the id, deleted 30 days after creation.
    Operation(
        "POST",
        "/v1/blobs",
        blobs.create_blob,
        "start uploading an attachment blob; the relay draws its id",
        201,
        schema.BlobCreated,
        schema.BlobRequest,
        errors=(413,),
        links=tuple(
            (name, target, {"blob_id": "$response.body#/blob_id"})
            for name, target in (
                ("PutPart", "put_blob_part"),
                ("Status", "blob_status"),
                ("Complete", "complete_blob"),
                ("Download", "get_blob"),
                ("Delete", "delete_blob"),
            )
        ),
    ),
    Operation(
        "PUT",
        "/v1/blobs/{blob_id}/parts/{index}",
        blobs.put_blob_part,
        "upload one part (exactly part_size bytes, the last one the remainder) of the "
        "caller's account's blob; re-sending a received part is allowed",
        200,
        schema.BlobParts,
        "BlobBytes",
        errors=(404, 409),
        path_params=_PART_PARAMS,
        binary_request=True,
    ),
    Operation(
        "GET",
        "/v1/blobs/{blob_id}/status",
        blobs.blob_status,
        "an upload's parts received so far (to resume it)",
        200,
        schema.BlobStatus,
        errors=(404,),
        path_params=_BLOB_PARAM,
    ),
    Operation(
        "POST",
        "/v1/blobs/{blob_id}/complete",
        blobs.complete_blob,
        "finish an upload once every part is received; the blob becomes read-only",
        200,
        schema.BlobCompleted,
        errors=(404, 409),
        path_params=_BLOB_PARAM,
    ),
    Operation(
        "GET",
        "/v1/blobs/{blob_id}",
        blobs.get_blob,
        "download a complete blob; no authentication (the id is the capability); a single byte Range answers 206",
        200,
        "BlobBytes",
        auth=False,
        errors=(404, 416, 429),
        path_params=_BLOB_PARAM,
        binary_response=True,
    ),
    Operation(
        "DELETE",
        "/v1/blobs/{blob_id}",
        blobs.delete_blob,
        "delete a blob of the caller's account, row and bytes, at once",
        200,
        schema.BlobDeleted,
        errors=(404,),
        path_params=_BLOB_PARAM,
    ),
    # Sealed sender (imsg_relay/sealed.py): certificates, access settings, sealed sends.
    Operation(
        "GET",
        "/v1/sealed/keys",
        sealed.sealed_keys,
        "the relay's sender-certificate keys, oldest first, each endorsed by the one before",
        200,
        sealed.SealedKeys,
        auth=False,
    ),
    Operation(
        "POST",
        "/v1/sealed/certificate",
        sealed.sender_certificate,
        "a short-lived sender certificate for the calling device",
        200,
        sealed.SenderCertificate,
        sealed.CertificateRequest,
    ),
    Operation(
        "GET",
        "/v1/sealed/access",
        sealed.get_sealed_access,
        "whether the caller's account has an access key set and allows anyone",
        200,
        sealed.SealedAccess,
    ),
    Operation(
        "PUT",
        "/v1/sealed/access",
        sealed.put_sealed_access,
        "set the caller's account's unidentified access key and allow-anyone flag",
        200,
        sealed.SealedAccess,
        sealed.SealedAccessRequest,
    ),
    Operation(
        "PUT",
        "/v1/sealed/messages/{account_id}",
        sealed.send_sealed,
        "store sealed envelopes (no sender) for every device of an account; no "
        "credential, the recipient's access key instead",
        200,
        schema.SendResult,
        schema.SendRequest,
        auth=False,
        errors=(401, 409, 429),
        path_params=_ACCOUNT_PARAM,
        headers=(
            (
                "Unidentified-Access-Key",
                {"type": "string", "format": "byte"},
                "base64 of the recipient's 16-byte unidentified access key",
            ),
        ),
    ),
    # Profiles: one ciphertext per account, filed under a key id only holders of the
    # profile key can compute; reading needs no credential (the key id is the capability).
    Operation(
        "PUT",
        "/v1/profile/{key_id}",
        profiles.put_profile,
        "store (replace) the caller's account's profile ciphertext",
        200,
        profiles.ProfileStored,
        "ProfileBytes",
        errors=(409, 413, 415),
        path_params=profiles.PROFILE_PARAMS,
        binary_request=True,
    ),
    Operation(
        "GET",
        "/v1/profile/{account_id}/{key_id}",
        profiles.get_profile,
        "an account's profile ciphertext, if it is filed under this key id; no authentication",
        200,
        "ProfileBytes",
        auth=False,
        errors=(404, 429),
        path_params=profiles.PROFILE_READ_PARAMS,
        binary_response=True,
    ),
    # Backups and restore (routes/backups.py), the privacy report (routes/privacy.py).
    Operation(
        method="PUT",
        path="/v1/backup",
        handler=backups.put_backup,
        summary="upload (replace) this account's backup: raw ciphertext",
        ok=200,
        response=backups.BackupStored,
        request="BlobBytes",
        errors=(409,),
        binary_request=True,
        query=(Param("access_hash", backups.AccessHash, "SHA-256 of the backup access token (required)"),),
    ),
    Operation(
        method="GET",
        path="/v1/backup",
        handler=backups.backup_status,
        summary="this account's backup: size and times",
        ok=200,
        response=backups.BackupStored,
        errors=(404,),
    ),
    Operation(
        method="DELETE",
        path="/v1/backup",
        handler=backups.delete_backup,
        summary="delete this account's backup, row and bytes, at once",
        ok=200,
        response=backups.BackupDeleted,
    ),
    Operation(
        method="GET",
        path="/v1/restore/account",
        handler=backups.restore_account,
        summary="the account whose backup the access token (bearer) opens",
        ok=200,
        response=schema.Account,
        auth=False,
        errors=(401, 404, 429),
    ),
    Operation(
        method="GET",
        path="/v1/restore/backup",
        handler=backups.restore_backup,
        summary="download the backup the access token (bearer) opens",
        ok=200,
        response="BlobBytes",
        auth=False,
        errors=(401, 404, 429),
        binary_response=True,
    ),
    Operation(
        method="PUT",
        path="/v1/restore/devices/{device_id}",
        handler=backups.restore_device,
        summary="enrol a restored device: access token (bearer) and an account-key signature",
        ok=201,
        response=schema.DeviceCreated,
        request=backups.RestoreDeviceRequest,
        auth=False,
        errors=(401, 404, 409, 429),
        path_params=_DEVICE_PARAM,
    ),
    Operation(
        method="GET",
        path="/v1/privacy/report",
        handler=privacy.privacy_report,
        summary="everything the relay holds about the caller's account, from its tables",
        ok=200,
        response=PrivacyReport,
    ),
)
