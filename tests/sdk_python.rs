//! Acceptance 9: the official `openai` Python SDK streams a chat completion through the proxy,
//! reads non-streamed answers and maps the proxy's errors to its exception classes.
//!
//! The interpreter is `$OPENAI_SDK_PYTHON` (scripts/test.sh points it at a virtualenv with the
//! pinned SDK), else `python3`. A missing SDK fails the test: it never skips.

mod common;

use common::mock::Mock;
use common::*;

#[test]
fn official_python_sdk_works_through_the_proxy() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    run_sdk_script("chat_stream.py", &proxy, TOKEN, "sdk checks passed");
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
