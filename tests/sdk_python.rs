//! Acceptance 9: the official `openai` Python SDK streams a chat completion through the proxy,
//! reads non-streamed answers and maps the proxy's errors to its exception classes.
//!
//! The interpreter is `$OPENAI_SDK_PYTHON` (scripts/test.sh points it at a virtualenv with the
//! pinned SDK), else `python3`. A missing SDK fails the test: it never skips.

mod common;

use std::process::Command;

use common::mock::Mock;
use common::*;

#[test]
fn official_python_sdk_works_through_the_proxy() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let python = std::env::var("OPENAI_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/chat_stream.py");
    let out = Command::new(&python)
        .arg(script)
        .env("OPENAI_BASE_URL", proxy.url("/v1"))
        .env("OPENAI_API_KEY", TOKEN)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed ({python}; run scripts/test.sh, which installs tests/sdk/requirements.txt):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("sdk checks passed"), "{stdout}");
    let chat = mock.state.last_request();
    assert_eq!(chat.path, "/v1/chat/completions");
    assert_eq!(
        chat.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        chat.header("user-agent")
            .is_some_and(|ua| ua.contains("OpenAI/Python"))
    );
}
