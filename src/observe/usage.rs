//! Token usage read on the side of a response as it passes: from the `usage` object of a JSON
//! body (decoded on the side when the upstream compressed it), or from the events of a stream
//! (a chat chunk carrying `usage`, or the Responses API's `response.completed`). Nothing is
//! held back or changed: the bytes are only looked at.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use std::borrow::Cow;
use std::collections::VecDeque;

use actix_web::web::Bytes;
use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// What the meter learned, shared with whoever reports on the request.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// True once the body ended normally; a reading without it is partial.
    pub complete: bool,
}

pub type SharedReading = Rc<RefCell<Reading>>;

const HEAD_BYTES: usize = 4 * 1024;
const TAIL_BYTES: usize = 16 * 1024;
const MAX_EVENT_BYTES: usize = 1024 * 1024;

enum Decode {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

enum Shape {
    /// The first and last bytes of a JSON body, as the chunks that carried them: held, not
    /// copied (most bodies arrive in one chunk and are searched in place).
    Json {
        head: Vec<Bytes>,
        head_len: usize,
        tail: VecDeque<Bytes>,
        tail_len: usize,
    },
    /// Bytes of the event not yet complete.
    Events { pending: Vec<u8> },
}

pub struct UsageMeter {
    decode: Decode,
    shape: Shape,
    reading: SharedReading,
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.as_object()?;
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    let prompt = get("prompt_tokens")
        .or_else(|| get("input_tokens"))
        .unwrap_or(0);
    let completion = get("completion_tokens")
        .or_else(|| get("output_tokens"))
        .unwrap_or(0);
    let total = get("total_tokens").unwrap_or(prompt + completion);
    Some(Usage {
        prompt,
        completion,
        total,
    })
}

/// The usage fields of every OpenAI endpoint (chat/completions/embeddings use `prompt_` and
/// `completion_`, the Responses and Realtime APIs `input_` and `output_`), read straight into
/// a struct: no map is built for a usage object.
#[derive(serde::Deserialize)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl From<UsageFields> for Usage {
    fn from(u: UsageFields) -> Usage {
        let prompt = u.prompt_tokens.or(u.input_tokens).unwrap_or(0);
        let completion = u.completion_tokens.or(u.output_tokens).unwrap_or(0);
        Usage {
            prompt,
            completion,
            total: u.total_tokens.unwrap_or(prompt + completion),
        }
    }
}

/// The JSON value after the last (or first) `needle` (a quoted key) and its colon in `bytes`,
/// if it parses as `T`.
fn value_after<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    needle: &[u8],
    last: bool,
) -> Option<T> {
    // SIMD substring search: a byte-by-byte scan of a 16 KiB tail cost more than the parse.
    let pos = if last {
        memchr::memmem::rfind(bytes, needle)?
    } else {
        memchr::memmem::find(bytes, needle)?
    };
    let rest = &bytes[pos + needle.len()..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<T>();
    values.next()?.ok()
}

impl UsageMeter {
    /// A meter for a response of this content type and coding, or `None` when usage cannot be
    /// in it (not JSON or an event stream, or a coding it cannot decode on the side).
    pub fn for_response(
        content_type: &str,
        coding: Option<&str>,
        reading: SharedReading,
    ) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let shape = match essence {
            "application/json" => Shape::Json {
                head: Vec::new(),
                head_len: 0,
                tail: VecDeque::new(),
                tail_len: 0,
            },
            "text/event-stream" => Shape::Events {
                pending: Vec::new(),
            },
            _ => return None,
        };
        let decode = match coding.map(str::trim) {
            None | Some("") | Some("identity") => Decode::Identity,
            Some("gzip") | Some("x-gzip") => {
                Decode::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some("br") => {
                Decode::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Some(_) => return None,
        };
        Some(Self {
            decode,
            shape,
            reading,
        })
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        let decoded: Vec<u8> = match &mut self.decode {
            Decode::Identity => return self.take(chunk.clone()),
            Decode::Gzip(d) => {
                if d.write_all(chunk).and_then(|_| d.flush()).is_err() {
                    return;
                }
                std::mem::take(d.get_mut())
            }
            Decode::Brotli(d) => {
                if d.write_all(chunk).and_then(|_| d.flush()).is_err() {
                    return;
                }
                std::mem::take(d.get_mut())
            }
        };
        self.take(Bytes::from(decoded));
    }

    fn take(&mut self, bytes: Bytes) {
        match &mut self.shape {
            Shape::Json {
                head,
                head_len,
                tail,
                tail_len,
            } => {
                if *head_len < HEAD_BYTES && !bytes.is_empty() {
                    let n = (HEAD_BYTES - *head_len).min(bytes.len());
                    head.push(bytes.slice(..n));
                    *head_len += n;
                }
                *tail_len += bytes.len();
                tail.push_back(bytes);
                while tail
                    .front()
                    .is_some_and(|f| *tail_len - f.len() >= TAIL_BYTES)
                {
                    *tail_len -= tail.pop_front().map_or(0, |f| f.len());
                }
            }
            Shape::Events { pending } => {
                pending.extend_from_slice(&bytes);
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    Self::event(&self.reading, &event);
                }
                if pending.len() > MAX_EVENT_BYTES {
                    pending.clear();
                }
            }
        }
    }

    fn event(reading: &SharedReading, event: &[u8]) {
        for line in event.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if !data.starts_with(b"{") {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            let mut r = reading.borrow_mut();
            if r.model.is_none() {
                r.model = v["model"]
                    .as_str()
                    .or_else(|| v["response"]["model"].as_str())
                    .map(str::to_owned);
            }
            if let Some(u) = usage_of(&v["usage"]).or_else(|| usage_of(&v["response"]["usage"])) {
                r.usage = Some(u);
            }
        }
    }

    /// The body ended normally.
    pub fn finish(mut self) {
        if let Decode::Gzip(d) = &mut self.decode {
            let _ = d.try_finish();
            let rest = std::mem::take(d.get_mut());
            self.take(Bytes::from(rest));
        }
        let mut r = self.reading.borrow_mut();
        if let Shape::Json { head, tail, .. } = &self.shape {
            let tail = contiguous(tail.iter());
            r.usage = value_after::<UsageFields>(&tail, b"\"usage\"", true).map(Usage::from);
            r.model = value_after::<String>(&contiguous(head.iter()), b"\"model\"", false);
        }
        r.complete = true;
    }
}

/// The chunks as one slice: borrowed when there is one chunk, joined otherwise.
fn contiguous<'a>(mut chunks: impl Iterator<Item = &'a Bytes>) -> Cow<'a, [u8]> {
    let Some(first) = chunks.next() else {
        return Cow::Borrowed(&[]);
    };
    match chunks.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut all = [first.as_ref(), second.as_ref()].concat();
            chunks.for_each(|c| all.extend_from_slice(c));
            Cow::Owned(all)
        }
    }
}

/// Passes a body through unchanged while feeding a meter; the meter is finished when the body
/// ends normally (a body cut short leaves its reading partial).
pub struct Metered<S> {
    inner: S,
    meter: Option<UsageMeter>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, meter: Option<UsageMeter>) -> Self {
        Self { inner, meter }
    }
}

impl<S, E> futures_util::Stream for Metered<S>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, E>> + Unpin,
{
    type Item = Result<actix_web::web::Bytes, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => {
                if let Some(meter) = self.meter.as_mut() {
                    meter.feed(chunk);
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(meter) = self.meter.take() {
                    meter.finish();
                }
            }
            _ => {}
        }
        polled
    }
}

/// The request body with `stream_options.include_usage = true` added, for a streamed chat
/// completion whose client did not ask for usage itself; `None` when nothing is to change.
pub fn with_stream_usage(body: &[u8]) -> Option<Vec<u8>> {
    // Most requests are not streamed: find that out without building the whole document.
    #[derive(serde::Deserialize)]
    struct Streamed {
        stream: Option<bool>,
    }
    let mentions_stream = memchr::memmem::find(body, b"\"stream\"").is_some();
    if !mentions_stream || serde_json::from_slice::<Streamed>(body).ok()?.stream != Some(true) {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if options.is_null() {
        *options = Value::Object(Default::default());
    }
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok()
}

/// True for the chat chunk that only carries usage (`"choices": []` and a `usage` object):
/// the one the proxy asked for on the client's behalf.
fn is_usage_only_event(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        line.strip_prefix(b"data:")
            .map(<[u8]>::trim_ascii)
            .filter(|d| d.starts_with(b"{"))
            .and_then(|d| serde_json::from_slice::<Value>(d).ok())
            .is_some_and(|v| {
                v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
            })
    })
}

/// Removes the usage-only chunk from a stream whose usage the proxy requested. Complete events
/// of each chunk go out at once; only an event split across chunks waits for its end.
pub struct StripUsageChunk<S> {
    inner: S,
    pending: Vec<u8>,
}

impl<S> StripUsageChunk<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<S, E> futures_util::Stream for StripUsageChunk<S>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, E>> + Unpin,
{
    type Item = Result<actix_web::web::Bytes, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            let chunk = match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                Poll::Ready(None) if !self.pending.is_empty() => {
                    let rest = std::mem::take(&mut self.pending);
                    return Poll::Ready(Some(Ok(rest.into())));
                }
                other => return other,
            };
            self.pending.extend_from_slice(&chunk);
            let mut out = Vec::with_capacity(self.pending.len());
            while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                if !is_usage_only_event(&event) {
                    out.extend_from_slice(&event);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out.into())));
            }
            // Only a partial event, or the removed chunk: nothing to send for this read.
        }
    }
}

/// Model names grouped into families for metric labels, so cardinality stays bounded whatever
/// model strings the upstream returns.
pub fn model_family(model: &str) -> &'static str {
    const FAMILIES: &[&str] = &[
        "gpt-realtime",
        "gpt-image",
        "gpt-audio",
        "gpt-5",
        "gpt-4.1",
        "gpt-4o",
        "gpt-4",
        "gpt-3.5",
        "o1",
        "o3",
        "o4",
        "text-embedding-3",
        "text-embedding-ada",
        "whisper",
        "tts",
        "dall-e",
        "omni-moderation",
        "codex",
        "computer-use",
    ];
    FAMILIES
        .iter()
        .find(|f| model.starts_with(*f))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(ct: &str, coding: Option<&str>) -> (UsageMeter, SharedReading) {
        let reading = SharedReading::default();
        (
            UsageMeter::for_response(ct, coding, Rc::clone(&reading)).unwrap(),
            reading,
        )
    }

    const COMPLETION: &str = r#"{"id":"x","model":"gpt-4o-mini","choices":[{"message":{"content":"\"usage\": fake"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

    #[test]
    fn json_usage_in_any_chunking() {
        for size in [1, 3, 17, 1000] {
            let (mut m, r) = meter("application/json", None);
            for chunk in COMPLETION.as_bytes().chunks(size) {
                m.feed(&Bytes::copy_from_slice(chunk));
            }
            m.finish();
            let r = r.borrow();
            assert_eq!(
                r.usage,
                Some(Usage {
                    prompt: 5,
                    completion: 7,
                    total: 12
                })
            );
            assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
            assert!(r.complete);
        }
    }

    #[test]
    fn gzip_json_is_decoded_on_the_side() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(COMPLETION.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let (mut m, r) = meter("application/json; charset=utf-8", Some("gzip"));
        for chunk in gz.chunks(10) {
            m.feed(&Bytes::copy_from_slice(chunk));
        }
        m.finish();
        assert_eq!(r.borrow().usage.map(|u| u.total), Some(12));
    }

    #[test]
    fn usage_is_requested_only_for_streams_that_did_not_ask() {
        let injected = with_stream_usage(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let v: Value = serde_json::from_slice(&injected).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"], serde_json::json!([]));
        assert!(with_stream_usage(br#"{"model":"m","stream":false}"#).is_none());
        assert!(
            with_stream_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#)
                .is_none()
        );
        let kept =
            with_stream_usage(br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#)
                .unwrap();
        let v: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
    }

    #[test]
    fn stream_usage_from_chat_chunks_and_responses_events() {
        let (mut m, r) = meter("text/event-stream", None);
        let events = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
        for chunk in events.as_bytes().chunks(7) {
            m.feed(&Bytes::copy_from_slice(chunk));
        }
        m.finish();
        assert_eq!(
            r.borrow().usage,
            Some(Usage {
                prompt: 3,
                completion: 4,
                total: 7
            })
        );
        let (mut m, r) = meter("text/event-stream", None);
        m.feed(&Bytes::from_static(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"o3\",\"usage\":{\"input_tokens\":10,\"output_tokens\":2,\"total_tokens\":12}}}\n\n"));
        assert_eq!(
            r.borrow().usage.map(|u| (u.prompt, u.completion)),
            Some((10, 2))
        );
        assert_eq!(r.borrow().model.as_deref(), Some("o3"));
        assert!(!r.borrow().complete, "not finished yet: partial");
    }
}
