"""schemathesis hooks for api_openapi::schemathesis_finds_nothing (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis

# Refusals a schema cannot foresee (see schemathesis.toml): the key's content, a link another
# record already has.
NOT_THE_SCHEMA = (
    "public_key field is not an OpenSSH public key",
    "is already used by another",
)


def _messages(errors):
    if isinstance(errors, dict):
        for v in errors.values():
            yield from _messages(v)
    elif isinstance(errors, list):
        for v in errors:
            yield from _messages(v)
    elif isinstance(errors, str):
        yield errors


@schemathesis.check
def validator_accepts_schema_valid_data(ctx, response, case):
    """Schema-valid data is never refused by the request validator (400 "No input provided" or a
    422 `errors` map), whatever the operation's other refusals."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        body = response.json()
    except Exception:
        return None
    if not isinstance(body, dict):
        return None
    if response.status_code == 400 and str(body.get("detail", "")).startswith("No input provided"):
        raise AssertionError("A schema-valid body was refused as no input")
    left = [
        m
        for m in _messages(body.get("errors"))
        if not any(reason in m for reason in NOT_THE_SCHEMA)
    ]
    if response.status_code == 422 and left:
        raise AssertionError(f"The validator refused schema-valid data: {left}")
    return None
