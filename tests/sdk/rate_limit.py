"""The official OpenAI Python SDK against a client limited to 1 request per minute: the second
call raises RateLimitError (retries off), with the proxy's headers available.
"""

import os
import sys

import openai


def main() -> None:
    client = openai.OpenAI(
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ["OPENAI_API_KEY"],
        max_retries=0,
    )
    client.models.list()
    try:
        client.models.list()
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.code == "rate_limit_exceeded", e.code
        assert e.response.headers.get("x-ratelimit-limit-requests") == "1", e.response.headers
        assert int(e.response.headers["retry-after"]) >= 1
    else:
        raise AssertionError("the second request was not refused")
    print("rate limit checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"SDK rate limit check failed: {e!r}", file=sys.stderr)
        sys.exit(1)
