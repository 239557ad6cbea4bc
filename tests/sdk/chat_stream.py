"""The official OpenAI Python SDK against the proxy: only base_url and api_key change.

Run by tests/sdk_python.rs with OPENAI_BASE_URL (the proxy's /v1) and OPENAI_API_KEY (the
service token) set; exits non-zero with a message on the first failed check.
"""

import os
import sys

import openai

EXPECTED = "Hello from the mock!"


def main() -> None:
    client = openai.OpenAI(
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ["OPENAI_API_KEY"],
        max_retries=0,
    )

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    text = "".join(pieces)
    assert text == EXPECTED, f"streamed text {text!r}"
    assert len([p for p in pieces if p]) == 4, f"expected 4 content chunks, got {pieces!r}"

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert raw.headers.get("x-request-id") == "req_mock_chat", dict(raw.headers)
    completion = raw.parse()
    assert completion.choices[0].message.content == EXPECTED, completion
    assert completion.usage.total_tokens == 9, completion.usage

    wrong = openai.OpenAI(
        base_url=os.environ["OPENAI_BASE_URL"], api_key="not-the-token", max_retries=0
    )
    try:
        wrong.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert e.code == "invalid_api_key", e.code
    else:
        raise AssertionError("a wrong token did not raise AuthenticationError")

    try:
        client.with_options(base_url=os.environ["OPENAI_BASE_URL"].removesuffix("/v1")).models.list()
    except openai.NotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("a path outside /v1 did not raise NotFoundError")

    print("sdk checks passed: stream, non-stream, AuthenticationError, NotFoundError")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"SDK check failed: {e}", file=sys.stderr)
        sys.exit(1)
