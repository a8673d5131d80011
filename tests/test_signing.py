from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier.signing import headers, secret_key, sign

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_known_answer_vector_of_the_specification() -> None:
    assert sign([SPEC_SECRET], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_library_verifies_our_headers_for_every_rotated_secret() -> None:
    new, old = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", SPEC_SECRET
    body = json.dumps({"id": "evt_1", "type": "patient.updated"}).encode()
    import time
    h = headers([new, old], "evt_1", int(time.time()), body)
    for secret in (new, old):
        assert Webhook(secret).verify(body, h) == {"id": "evt_1", "type": "patient.updated"}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QkJCQkJCQkJCQkJCQkJCQkJCQkI=").verify(body, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", h)


def test_malformed_secret_error_does_not_echo_it() -> None:
    with pytest.raises(ValueError) as info:
        secret_key("whsec_not base64!!")
    assert "not base64" in str(info.value) and "!!" not in str(info.value)
