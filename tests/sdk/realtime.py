"""The official OpenAI Python SDK's realtime client through the proxy (websockets transport).

Run by tests/realtime.rs with OPENAI_BASE_URL (the proxy's /v1) and OPENAI_API_KEY (the service
token) set.
"""

import os
import sys

import openai


def main() -> None:
    client = openai.OpenAI(
        base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"]
    )
    with client.realtime.connect(model="gpt-realtime") as connection:
        event = connection.recv()
        assert event.type == "session.created", event
        connection.send({"type": "response.create"})
        event = connection.recv()
        assert event.type == "response.done", event
        assert event.response.usage.total_tokens == 7, event
    print("realtime checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"SDK realtime check failed: {e!r}", file=sys.stderr)
        sys.exit(1)
