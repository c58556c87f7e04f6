"""Generated requests against every endpoint: never a 5xx, never a hang, never a silent loss."""

from __future__ import annotations

import hmac
import json
import os
import time
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.proofs import SignatureAuth, UrlSignatureAuth, each, url_signature
from schemas.registry import FORM, PROVIDERS, REGISTRY, form_fields
from tests.conftest import (
    API_TOKEN,
    OTHER_SECRETS,
    TEST_CLIENT_BASE,
    WEBHOOK_TOKENS,
    fixture_names,
    load_fixture,
    queued,
)

REAL_TOKENS = [t for tokens in WEBHOOK_TOKENS.values() for t in tokens]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
FIXTURES = [load_fixture(p, n) for p in PROVIDERS for n in fixture_names(p)]
FORM_FIXTURES = [
    load_fixture(p, n)
    for p in PROVIDERS
    if REGISTRY[p].media_type == FORM
    for n in fixture_names(p)
]


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["fixture", "mutated", "json", "bytes", "form"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "form":  # Twilio's, its fields changed
        fields = dict(draw(st.sampled_from(FORM_FIXTURES)))
        for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
            fields[key] = draw(st.text(max_size=20))
        return urlencode(fields).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    body = dict(draw(st.sampled_from(FIXTURES)))
    if kind == "mutated":
        for key in draw(st.lists(st.sampled_from(sorted(body) or ["x"]), max_size=3)):
            if draw(st.booleans()):
                body.pop(key, None)
            else:
                body[key] = draw(json_values)
    return json.dumps(body).encode()


paths = st.one_of(
    st.builds(
        lambda p, t: f"/webhooks/{p}/{t}",
        st.sampled_from([*PROVIDERS, "nosuch", ""]),
        st.sampled_from([*REAL_TOKENS, "x", "%00", "..%2f"]),
    ),
    st.builds(lambda p: f"/webhooks/{p}", st.sampled_from(PROVIDERS)),
    st.builds(
        lambda m: f"/messages/zapi/{m}",
        st.text(min_size=1, max_size=20).map(
            lambda s: s.replace("/", "_").replace("?", "_").replace("#", "_")
        ),
    ),
    st.sampled_from(["/healthz", "/readyz", "/", "/messages", "/webhooks"]),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.sampled_from(
            [*REAL_TOKENS, f"Bearer {API_TOKEN}", "Bearer", "", "Bearer " + "a" * 500]
        ).map(lambda t: t if not t or " " in t else f"Bearer {t}"),
        "Content-Type": st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/JSON",
            ]
        ),
    },
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])


# Thousands in every run, the same ones each time (CI is reproducible); set
# TICKS_FUZZ_EXAMPLES=50000 for a long, randomised session that explores new inputs.
FUZZ_EXAMPLES = int(os.environ.get("TICKS_FUZZ_EXAMPLES", "3000"))
EXPLORE = "TICKS_FUZZ_EXAMPLES" in os.environ


def signature_headers(record, path: str, body: bytes) -> dict[str, str]:
    """The headers with which the record's provider would have signed this body."""
    for proof in each(record.auth):
        if isinstance(proof, SignatureAuth):
            secret = OTHER_SECRETS.get(proof.setting, WEBHOOK_TOKENS[record.name])[0]
            digest = hmac.new(secret.encode(), body, proof.digest).hexdigest()
            return {proof.header: proof.prefix + digest}
        if isinstance(proof, UrlSignatureAuth):
            try:
                fields = form_fields(body)
            except ValueError:
                return {}
            url = TEST_CLIENT_BASE + path
            return {proof.header: url_signature(WEBHOOK_TOKENS[record.name][0], url, fields)}
    return {}


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=not EXPLORE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=methods, path=paths, header_values=headers, body=bodies(), sign=st.booleans())
def test_generated_requests_are_answered_honestly(
    client, broker, method, path, header_values, body, sign
):
    record = REGISTRY.get(path.split("/")[2]) if path.startswith("/webhooks/") else None
    if sign and record:
        # Signed as its provider would: what is past the signature is exercised too.
        header_values = {**header_values, **signature_headers(record, path, body)}
    before = broker.llen("ticks")
    started = time.monotonic()
    response = client.open(path, method=method, headers=header_values, data=body)
    assert time.monotonic() - started < 2
    assert response.status_code < 500, (response.status_code, response.data[:300])
    enqueued = broker.llen("ticks") - before
    if (
        method == "HEAD"
        or response.status_code == 204
        or (method == "OPTIONS" and response.status_code == 200)
    ):
        assert enqueued == 0
        return
    if response.status_code == 200 and response.mimetype == "text/html":
        # The status page, to a caller who gave the API token: a page, and nothing enqueued.
        assert path.split("?")[0] == "/" and method == "GET", path
        assert enqueued == 0
        return
    payload = response.get_json(silent=True)
    assert isinstance(payload, dict), response.data[:300]
    if response.status_code >= 400:
        assert isinstance(payload.get("error"), str) and payload["error"]
    # Something is on the queue exactly when the answer says so.
    # (Meta: a batch's valid statuses are enqueued, and the body quarantined for the rest.)
    says_quarantined = bool(payload.get("quarantined")) or response.status_code == 422
    says_accepted = payload.get("accepted", 0) > 0
    assert enqueued == says_accepted + says_quarantined, (response.status_code, payload)
    if response.status_code == 422 or payload.get("quarantined"):
        [(task, _record)] = queued(broker)[-1:]
        assert task == "ticks.quarantine"


@pytest.mark.parametrize("limit", [1024, 65536])
def test_oversized_body_is_refused_without_being_read(database_url, redis_url, broker, limit):
    from io import BytesIO

    from tests.conftest import make_app

    class CountingStream(BytesIO):
        consumed = 0

        def read(self, size=-1):
            data = super().read(size)
            CountingStream.consumed += len(data)
            return data

    app = make_app(database_url, redis_url, MAX_BODY_BYTES=limit)
    stream = CountingStream(b"{" + b" " * (limit * 20) + b"}")
    response = app.test_client().post(
        f"/webhooks/zapi/{WEBHOOK_TOKENS['zapi'][0]}",
        input_stream=stream,
        headers={"Content-Type": "application/json", "Content-Length": str(limit * 20 + 2)},
    )
    assert response.status_code == 413
    assert CountingStream.consumed == 0
    assert broker.llen("ticks") == 0


form_text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(
    max_examples=300,
    derandomize=not EXPLORE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.dictionaries(
        st.sampled_from(["MessageSid", "MessageStatus", "To", "From", "ErrorCode", "Other"])
        | form_text,
        form_text,
        max_size=4,
    ),
    dropped=st.sets(st.sampled_from(["MessageSid", "MessageStatus", "To"])),
)
def test_signed_forms_are_answered_honestly(client, broker, changes, dropped):
    """Whatever a correctly signed Twilio form holds: accepted, ignored or quarantined, never
    a 5xx, and on the queue exactly what the answer says."""
    fields = {**load_fixture("twilio", "read"), **changes}
    for name in dropped:
        fields.pop(name, None)
    body = urlencode(fields).encode()
    before = broker.llen("ticks")
    response = client.post(
        "/webhooks/twilio",
        data=body,
        content_type=FORM,
        headers=signature_headers(REGISTRY["twilio"], "/webhooks/twilio", body),
    )
    assert response.status_code in (200, 422), (response.status_code, response.json)
    enqueued = broker.llen("ticks") - before
    if response.status_code == 422:
        assert enqueued == 1 and response.json["errors"]
    else:
        assert enqueued == (
            1 if response.json["accepted"] or response.json.get("quarantined") else 0
        )
