#!/usr/bin/env python3
"""DKIM and ARC signing for tests/tests/auth.rs, with dkimpy (an implementation nobody here
wrote), run from the venv ./build.sh test creates (MXNODE_DKIMPY_PYTHON).

    keygen DIR              RSA 2048 (openssl) and Ed25519 (PyNaCl) keys into DIR; prints the
                            two DKIM key records as JSON {"rsa": "v=DKIM1; ...", "ed25519": ...}
    sign KEY DOMAIN SEL     signs the message on stdin (rsa-sha256, or ed25519-sha256 when KEY
                            ends in .ed25519), relaxed/relaxed unless --simple; the signed
                            message on stdout
    arc KEY DOMAIN SEL ID   seals the message on stdin as authserv-id ID (it must carry an
                            Authentication-Results from ID); the sealed message on stdout

Never touches the network: signing needs no DNS.
"""

import base64
import json
import subprocess
import sys

import dkim
import nacl.signing

HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def keygen(directory):
    rsa = f"{directory}/rsa.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", rsa, "2048"],
        check=True,
        capture_output=True,
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", rsa, "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    signing = nacl.signing.SigningKey.generate()
    with open(f"{directory}/key.ed25519", "wb") as f:
        f.write(base64.b64encode(bytes(signing)))
    print(
        json.dumps(
            {
                "rsa": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(),
                "ed25519": "v=DKIM1; k=ed25519; p="
                + base64.b64encode(bytes(signing.verify_key)).decode(),
            }
        )
    )


def read_key(path):
    with open(path, "rb") as f:
        return f.read()


def algorithm(path):
    return b"ed25519-sha256" if path.endswith(".ed25519") else b"rsa-sha256"


def main():
    command = sys.argv[1]
    if command == "keygen":
        keygen(sys.argv[2])
        return
    message = sys.stdin.buffer.read()
    key, domain, selector = sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode()
    if command == "sign":
        canonicalize = (b"simple", b"simple") if "--simple" in sys.argv else (b"relaxed", b"relaxed")
        length = "--length" in sys.argv
        signature = dkim.sign(
            message,
            selector,
            domain,
            read_key(key),
            include_headers=HEADERS,
            canonicalize=canonicalize,
            signature_algorithm=algorithm(key),
            length=length,
        )
        sys.stdout.buffer.write(signature + message)
    elif command == "arc":
        srv_id = sys.argv[5].encode()
        headers = dkim.arc_sign(
            message,
            selector,
            domain,
            read_key(key),
            srv_id,
            include_headers=HEADERS,
            signature_algorithm=algorithm(key),
        )
        sys.stdout.buffer.write(b"".join(headers) + message)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
