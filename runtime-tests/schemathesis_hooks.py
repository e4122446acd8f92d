"""schemathesis hooks for runtime-tests/tests/e2e/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

What the document leaves to the configuration, and what the runtime decides before the app
runs.
"""

import json
import os

import schemathesis


@schemathesis.hook
def before_load_schema(context, raw_schema):
    """The document as it holds for the host under test, where it leaves a choice to the
    configuration; otherwise schemathesis would count the 400s it promises as valid data
    refused.

    - Kinds and tiers are "one the `policies` variable defines": those of TASK_API_POLICIES
      (the variable the test gave the host).
    - `user_id` is "required with `auth = none`", which the host runs with.
    """
    policies = json.loads(os.environ["TASK_API_POLICIES"])
    schemas = raw_schema["components"]["schemas"]
    schemas["Kind"]["enum"] = sorted(set(policies.get("kinds", {})) | {"default"})
    schemas["Tier"]["enum"] = sorted(policies.get("tiers", {}))
    schemas["TaskRequest"]["required"] = ["user_id"]


@schemathesis.hook
def before_call(context, case, kwargs):
    """Spin answers 500 with an empty body to a request with a header value that is not UTF-8,
    before any component runs (the bundled host does the same: runtime-tests/src/trigger/http.rs,
    `prepare_headers`), so the app can never answer one. schemathesis sends Latin-1 characters
    past ASCII (each one such byte) in negative cases; each becomes "_ _": the inner space keeps
    the value invalid (the app then refuses it itself), and a value never starts or ends with
    whitespace, which HTTP would strip."""
    for name, value in list((case.headers or {}).items()):
        if isinstance(value, str) and not value.isascii():
            case.headers[name] = "".join(c if c.isascii() else "_ _" for c in value)
