"""schemathesis hooks for runtime-tests/tests/e2e/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

The document is used as the app serves it: nothing here changes it. What stays is a rule of the
runtime, not of the app.
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    """Spin answers 500 with an empty body to a request with a header value that is not UTF-8,
    before any component runs (the bundled host does the same: runtime-tests/src/trigger/http.rs,
    `prepare_headers`), so the app never sees such a request and cannot answer it. schemathesis
    sends Latin-1 characters past ASCII (each one such byte) in negative cases; each becomes
    "_ _": the inner space keeps the value invalid (the app then refuses it itself), and a value
    never starts or ends with whitespace, which HTTP would strip."""
    for name, value in list((case.headers or {}).items()):
        if isinstance(value, str) and not value.isascii():
            case.headers[name] = "".join(c if c.isascii() else "_ _" for c in value)
