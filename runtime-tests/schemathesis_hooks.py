"""schemathesis hooks for runtime-tests/tests/e2e/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

The document is used as the app serves it: nothing here changes it. What stays is a rule of the
runtime, not of the app, and a bound on how long the run waits.
"""

import re

import schemathesis

# The longest long poll the run sends: a claim's `wait` may be up to 30 s, and schemathesis
# sends hundreds of claims.
MAX_WAIT_MS = 50
WAIT = re.compile(r"^0*([0-9]+)(ms|s)$")


@schemathesis.hook
def before_call(context, case, kwargs):
    keep_header_values_utf8(case)
    bound_the_long_poll(case)


def keep_header_values_utf8(case):
    """Spin answers 500 with an empty body to a request with a header value that is not UTF-8,
    before any component runs (the bundled host does the same: runtime-tests/src/trigger/http.rs,
    `prepare_headers`), so the app never sees such a request and cannot answer it. schemathesis
    sends Latin-1 characters past ASCII (each one such byte) in negative cases; each becomes
    "_ _": the inner space keeps the value invalid (the app then refuses it itself), and a value
    never starts or ends with whitespace, which HTTP would strip."""
    for name, value in list((case.headers or {}).items()):
        if isinstance(value, str) and not value.isascii():
            case.headers[name] = "".join(c if c.isascii() else "_ _" for c in value)


def bound_the_long_poll(case):
    """A valid `wait` over MAX_WAIT_MS becomes MAX_WAIT_MS: a worker's long poll waits that
    long when nothing falls due, which is time, not contract. An invalid `wait` goes as
    generated."""
    if case.operation.path != "/api/v1/claims" or not isinstance(case.body, dict):
        return
    wait = case.body.get("wait")
    match = WAIT.match(wait) if isinstance(wait, str) else None
    if match and int(match.group(1)) * (1000 if match.group(2) == "s" else 1) > MAX_WAIT_MS:
        case.body["wait"] = f"{MAX_WAIT_MS}ms"
