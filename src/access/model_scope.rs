//! Model scopes: finding the `model` a request asks for. JSON bodies are read (bounded) and
//! parsed; multipart bodies are scanned as they stream past, so a large upload is never held.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use actix_web::http::header::{self, HeaderMap};
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::clients::Client;
use crate::error::ApiError;

/// How a body can be inspected for its model.
pub enum BodyShape {
    Json,
    Multipart(String),
    Other,
}

pub fn body_shape(headers: &HeaderMap) -> BodyShape {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyShape::Other;
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let suffix = essence.len().checked_sub(5).and_then(|i| essence.get(i..));
    if essence.eq_ignore_ascii_case("application/json")
        || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
    {
        return BodyShape::Json;
    }
    if essence.eq_ignore_ascii_case("multipart/form-data") {
        let boundary = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_owned())
        });
        if let Some(b) = boundary.filter(|b| !b.is_empty() && b.len() <= 70) {
            return BodyShape::Multipart(b);
        }
    }
    BodyShape::Other
}

/// Reads a whole JSON body, refusing one larger than `limit` (before reading, when the
/// client declared its length).
pub async fn read_json(
    payload: &mut web::Payload,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "JSON bodies are limited to {limit} bytes for clients with a model scope."
        ))
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let unreadable = |_| ApiError::BadRequest("The request body could not be read.");
    // Most bodies arrive in one chunk: hand that chunk on as it is, without a copy.
    let first = match payload.next().await {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk.map_err(unreadable)?,
    };
    if first.len() > limit {
        return Err(too_large());
    }
    let Some(second) = payload.next().await else {
        return Ok(first);
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024) as usize);
    body.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let chunk = chunk.map_err(unreadable)?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
        next = payload.next().await;
    }
    Ok(body.freeze())
}

/// The top-level `model` string of a JSON body, if any. Other fields are skipped unparsed.
pub fn json_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithModel {
        model: Option<String>,
    }
    serde_json::from_slice::<WithModel>(body).ok()?.model
}

/// What the multipart scan concluded.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Pending,
    Found(String),
    /// The form ended without a `model` field.
    End,
    /// Framing the scanner cannot follow: treated as an unknown model.
    Malformed,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Looking for the next delimiter (preamble, or the body of a part we do not need).
    Skip,
    /// Just after a delimiter: `--` ends the form, CRLF starts a part's headers.
    AfterDelimiter,
    Headers,
    ModelValue,
}

const MAX_PART_HEADERS: usize = 16 * 1024;
const MAX_MODEL_VALUE: usize = 256;

/// An incremental `multipart/form-data` scanner that keeps only what it still needs: the
/// last few bytes of a skipped part (a delimiter may straddle chunks), a part's headers, or
/// the model's value.
struct MultipartScanner {
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    state: State,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl MultipartScanner {
    fn new(boundary: &str) -> Self {
        Self {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // The first boundary has no CRLF before it; pretending it does makes every
            // delimiter look the same.
            buf: b"\r\n".to_vec(),
            state: State::Skip,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Scan {
        self.buf.extend_from_slice(chunk);
        loop {
            match self.state {
                State::Skip => match find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        self.buf.drain(..i + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = self.delimiter.len() - 1;
                        if self.buf.len() > keep {
                            self.buf.drain(..self.buf.len() - keep);
                        }
                        return Scan::Pending;
                    }
                },
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Scan::Pending;
                    }
                    if self.buf.starts_with(b"--") {
                        return Scan::End;
                    }
                    // RFC 2046 allows transport padding (spaces, tabs) before the CRLF.
                    match find(&self.buf, b"\r\n") {
                        Some(i) if self.buf[..i].iter().all(|b| *b == b' ' || b'\t' == *b) => {
                            self.buf.drain(..i + 2);
                            self.state = State::Headers;
                        }
                        Some(_) => return Scan::Malformed,
                        None if self.buf.len() > 256 => return Scan::Malformed,
                        None => return Scan::Pending,
                    }
                }
                State::Headers => match find(&self.buf, b"\r\n\r\n") {
                    Some(i) => {
                        let is_model = part_name(&self.buf[..i]).as_deref() == Some("model");
                        self.buf.drain(..i + 4);
                        self.state = if is_model {
                            State::ModelValue
                        } else {
                            State::Skip
                        };
                    }
                    None if self.buf.len() > MAX_PART_HEADERS => return Scan::Malformed,
                    None => return Scan::Pending,
                },
                State::ModelValue => match find(&self.buf, &self.delimiter) {
                    Some(i) if i > MAX_MODEL_VALUE => return Scan::Malformed,
                    Some(i) => {
                        return match std::str::from_utf8(&self.buf[..i]) {
                            Ok(v) => Scan::Found(v.trim().to_owned()),
                            Err(_) => Scan::Malformed,
                        };
                    }
                    None if self.buf.len() > MAX_MODEL_VALUE + self.delimiter.len() => {
                        return Scan::Malformed;
                    }
                    None => return Scan::Pending,
                },
            }
        }
    }
}

/// The `name` parameter of a part's `Content-Disposition` (not `filename`).
fn part_name(headers: &[u8]) -> Option<String> {
    let headers = std::str::from_utf8(headers).ok()?;
    let disposition = headers.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(v)
    })?;
    disposition.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// A refused model, noted by the body stream for the handler to answer 403 with.
pub type ModelRefusal = Rc<RefCell<Option<String>>>;

/// Passes a multipart body through unchanged while scanning it for the `model` field. On a
/// model outside the client's scope it ends the upload with an error (the upstream never sees
/// a complete request) and leaves the model in `refusal`.
pub struct MultipartModelCheck<S> {
    inner: S,
    scanner: Option<MultipartScanner>,
    client: Arc<Client>,
    refusal: ModelRefusal,
}

impl<S> MultipartModelCheck<S> {
    pub fn new(inner: S, boundary: &str, client: Arc<Client>, refusal: ModelRefusal) -> Self {
        Self {
            inner,
            scanner: Some(MultipartScanner::new(boundary)),
            client,
            refusal,
        }
    }
}

impl<S, E> Stream for MultipartModelCheck<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error>>,
{
    type Item = Result<Bytes, Box<dyn std::error::Error>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = ready!(this.inner.poll_next_unpin(cx));
        let Some(item) = item else {
            return Poll::Ready(None);
        };
        let chunk = item.map_err(Into::into)?;
        if let Some(scanner) = this.scanner.as_mut() {
            let verdict = match scanner.feed(&chunk) {
                Scan::Pending => None,
                Scan::End => Some(None),
                Scan::Found(model) if this.client.model_allowed(&model) => Some(None),
                Scan::Found(model) => Some(Some(model)),
                Scan::Malformed => Some(Some("(unreadable multipart form)".to_owned())),
            };
            if let Some(refused) = verdict {
                this.scanner = None;
                if let Some(model) = refused {
                    *this.refusal.borrow_mut() = Some(model);
                    return Poll::Ready(Some(Err("model not allowed".into())));
                }
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, value) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            match filename {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    /// Feeds `body` in chunks of every size from 1 up, so delimiters straddle chunk edges.
    fn scan_all_chunkings(body: &[u8]) -> Vec<Scan> {
        (1..=body.len().min(40))
            .map(|size| {
                let mut s = MultipartScanner::new("XyZ");
                for chunk in body.chunks(size) {
                    match s.feed(chunk) {
                        Scan::Pending => continue,
                        other => return other,
                    }
                }
                Scan::Pending
            })
            .collect()
    }

    #[test]
    fn finds_model_after_a_file_whatever_the_chunking() {
        let body = form(&[
            (
                "file",
                Some("model.mp3"),
                "ID3\r\n--XY\r\n-- binary \r\n--Xy",
            ),
            ("model", None, "whisper-1"),
            ("language", None, "en"),
        ]);
        for verdict in scan_all_chunkings(&body) {
            assert_eq!(verdict, Scan::Found("whisper-1".into()));
        }
    }

    #[test]
    fn form_without_model_ends() {
        let body = form(&[
            ("purpose", None, "fine-tune"),
            ("file", Some("x.jsonl"), "{}"),
        ]);
        for verdict in scan_all_chunkings(&body) {
            assert_eq!(verdict, Scan::End);
        }
    }

    #[test]
    fn oversized_model_value_is_malformed() {
        let long = "m".repeat(1000);
        let body = form(&[("model", None, &long)]);
        assert_eq!(MultipartScanner::new("XyZ").feed(&body), Scan::Malformed);
    }

    #[test]
    fn json_model_and_shapes() {
        assert_eq!(
            json_model(br#"{"messages":[{"content":"\"model\":\"x\""}],"model":"gpt-4o"}"#),
            Some("gpt-4o".into())
        );
        assert_eq!(json_model(br#"{"input":"x"}"#), None);
        assert_eq!(json_model(b"not json"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=\"abc\"".parse().unwrap(),
        );
        assert!(matches!(body_shape(&h), BodyShape::Multipart(b) if b == "abc"));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(matches!(body_shape(&h), BodyShape::Json));
        for (ct, json) in [
            ("Application/JSON", true),
            ("application/merge-patch+JSON", true),
            ("application/jsonl", false),
            ("json", false),
            ("text/plain", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(matches!(body_shape(&h), BodyShape::Json), json, "{ct}");
        }
        h.insert(
            header::CONTENT_TYPE,
            "Multipart/Form-Data; Boundary=xyz".parse().unwrap(),
        );
        assert!(matches!(body_shape(&h), BodyShape::Multipart(b) if b == "xyz"));
    }
}
