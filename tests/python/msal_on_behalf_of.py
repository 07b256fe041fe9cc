"""MSAL's on-behalf-of client, driven by tests/integration/on_behalf_of.rs.

The Rust test starts the fake Entra authority over TLS (support/fake_entra.rs) and runs this
script with the virtualenv's Python. It reads one JSON object from standard input:

    {"authority": "https://127.0.0.1:PORT/TENANT", "client_id": "...",
     "ca_bundle": "/path/ca.pem",
     "credential": {"secret": "..."} or {"private_key": "PEM", "public_certificate": "PEM"},
     "requests": [{"assertion": "eyJ...", "scopes": ["https://graph.microsoft.com/User.Read"]}]}

and prints one JSON array: MSAL's answer to each request, in order, exactly as
`ConfidentialClientApplication.acquire_token_on_behalf_of` returned it. It is not a pytest
module (its name does not start with `test_`): the assertions live in the Rust test, which
also sees what reached the authority.
"""

from __future__ import annotations

import json
import sys

import msal


def main() -> int:
    spec = json.load(sys.stdin)
    credential = spec["credential"]
    if "secret" in credential:
        client_credential = credential["secret"]
    else:
        # With the certificate (and no SHA-1 thumbprint) MSAL signs its assertion with PS256
        # and names the certificate by `x5t#S256`, as it does against Entra.
        client_credential = {
            "private_key": credential["private_key"],
            "public_certificate": credential["public_certificate"],
        }
    app = msal.ConfidentialClientApplication(
        spec["client_id"],
        client_credential=client_credential,
        authority=spec["authority"],
        # The authority is not a Microsoft host: no instance discovery (which would ask
        # login.microsoftonline.com), only the tenant's OpenID Connect discovery document.
        instance_discovery=False,
        # Trust the test authority only; nothing is added to a system store.
        verify=spec["ca_bundle"],
    )
    answers = [
        app.acquire_token_on_behalf_of(request["assertion"], request["scopes"])
        for request in spec["requests"]
    ]
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
