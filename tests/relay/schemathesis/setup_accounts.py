"""Register two accounts on a relay. Prints shell exports: ST_TOKEN (account A, device
777777, used by schemathesis), ST_ACCOUNT (account B) and ST_CHANNEL (a provisioning
channel B opened, so A's generated DELETEs cannot close it)."""

import base64
import hashlib
import os
import secrets
import sys

import httpx


def register(url):
    key = b"\x06" + os.urandom(32)
    acct = hashlib.sha256(b"imsg/v1/account-id" + key).digest()[:16].hex()
    tok = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    r = httpx.post(
        url + "/v1/accounts",
        json={
            "account_id": acct,
            "account_key": base64.b64encode(key).decode(),
            "handle": f"st-{secrets.token_hex(4)}@example.com",
            "device_list": base64.b64encode(b"list").decode(),
            "device_id": 777777,
            "token": tok,
        },
    )
    r.raise_for_status()
    return acct, tok


url = sys.argv[1]
_, token_a = register(url)
account_b, token_b = register(url)
r = httpx.post(url + "/v1/provisioning", json={}, headers={"Authorization": f"Bearer {token_b}"})
r.raise_for_status()
print(f"export ST_TOKEN={token_a} ST_ACCOUNT={account_b} ST_CHANNEL={r.json()['channel']}")
