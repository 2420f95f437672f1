//! Turning a handler's outcome into the result body the platform expects
//! (docs/runpod-protocol.md, *Output mapping* and *Streaming*), and serialising JSON the way
//! Python's `json.dumps` does.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use crate::handler::{HandlerOutput, JobError};

/// The SDK version whose protocol this runtime speaks. Reported as `runpod_version` in pings
/// and error JSON because the platform keys protocol features (job-stop, batch take) on it.
pub const SDK_COMPAT_VERSION: &str = "1.12.0";

/// Who produced an error: goes into the error JSON.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    /// `RUNPOD_POD_HOSTNAME` or `unknown`.
    pub hostname: String,
    /// `RUNPOD_POD_ID` or `unknown`.
    pub worker_id: String,
}

/// A job-done body. Field order is the SDK's build order (`output`, `error`, `stopPod`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(rename = "stopPod", skip_serializing_if = "std::ops::Not::not")]
    pub stop_pod: bool,
}

impl ResultBody {
    /// True when the platform will mark the job FAILED.
    pub fn is_error(&self) -> bool {
        self.error.as_ref().is_some_and(truthy)
    }

    /// JSON text as the SDK posts it (`json.dumps(result, ensure_ascii=False)`).
    pub fn to_json(&self) -> String {
        to_python_json(self, false)
    }

    /// The result as a JSON value (for the local endpoint API and local test mode).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Python truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Maps a successful handler return value exactly like the SDK does
/// (docs/runpod-protocol.md, *Output mapping*):
/// an object loses its `error` and `refresh_worker` keys (a truthy `error` becomes the
/// result's `error`, a truthy `refresh_worker` becomes `stopPod`), and an empty object output
/// is dropped. Anything else is the `output` as is.
pub fn map_output(out: HandlerOutput) -> ResultBody {
    let mut body = ResultBody {
        output: None,
        error: None,
        stop_pod: out.refresh_worker,
    };
    match out.value {
        Value::Object(mut map) => {
            let error = map.remove("error");
            let refresh = map.remove("refresh_worker");
            let empty = map.is_empty();
            if !empty {
                body.output = Some(Value::Object(map));
            }
            if let Some(err) = error.filter(truthy) {
                body.error = Some(err);
            }
            if refresh.as_ref().is_some_and(truthy) {
                body.stop_pod = true;
            }
        }
        other => body.output = Some(other),
    }
    body
}

/// The error JSON object the SDK builds from an exception (docs/runpod-protocol.md,
/// *Error JSON*).
#[derive(Serialize)]
struct ErrorInfo<'a> {
    error_type: &'a str,
    error_message: &'a str,
    error_traceback: &'a str,
    hostname: &'a str,
    worker_id: &'a str,
    runpod_version: &'a str,
}

/// `{"error": "<JSON string>"}` for a failed handler: the string is a JSON object with
/// `error_type`, `error_message`, `error_traceback`, `hostname`, `worker_id`,
/// `runpod_version`, serialised like Python's `json.dumps` (ASCII only).
pub fn map_error(err: &JobError, who: &WorkerIdentity) -> ResultBody {
    ResultBody {
        output: None,
        error: Some(Value::String(error_json(err, who))),
        stop_pod: false,
    }
}

/// The error JSON string alone.
pub fn error_json(err: &JobError, who: &WorkerIdentity) -> String {
    let traceback = err.traceback();
    to_python_json(
        &ErrorInfo {
            error_type: err.error_type(),
            error_message: err.message(),
            error_traceback: &traceback,
            hostname: &who.hostname,
            worker_id: &who.worker_id,
            runpod_version: SDK_COMPAT_VERSION,
        },
        true,
    )
}

/// The error of a streaming ("generator") handler: the SDK uses a different, plain format
/// there (docs/runpod-protocol.md, *Error JSON*).
pub fn map_stream_error(err: &JobError) -> ResultBody {
    ResultBody {
        output: None,
        error: Some(Value::String(format!(
            "handler: {} \ntraceback: {}",
            err.message(),
            err.traceback()
        ))),
        stop_pod: false,
    }
}

/// The final result of a streaming handler: `[]`, or every chunk with
/// `return_aggregate_stream` (docs/runpod-protocol.md, *Streaming*). A returned object's `error`/`refresh_worker` keys
/// are honoured as for plain handlers.
pub fn map_stream_final(out: HandlerOutput, chunks: Vec<Value>, aggregate: bool) -> ResultBody {
    let mapped = map_output(out);
    if let Some(err) = mapped.error {
        return ResultBody {
            output: None,
            error: Some(Value::String(match err {
                Value::String(s) => s,
                other => other.to_string(),
            })),
            stop_pod: mapped.stop_pod,
        };
    }
    ResultBody {
        output: Some(Value::Array(if aggregate { chunks } else { Vec::new() })),
        error: None,
        stop_pod: mapped.stop_pod,
    }
}

/// Serialises like Python's `json.dumps` with default separators (`", "`, `": "`);
/// `ensure_ascii` escapes every non-ASCII character as `\uXXXX` (UTF-16 units).
pub fn to_python_json<T: Serialize + ?Sized>(value: &T, ensure_ascii: bool) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyFormatter { ensure_ascii });
    // Serialising a `Value` or one of our plain structs into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Python's item separator `", "` before every array element and object key but the first.
fn item_separator<W: ?Sized + Write>(w: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

/// Python-compatible separators and ASCII escaping for `serde_json`.
struct PyFormatter {
    ensure_ascii: bool,
}

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(fragment.as_bytes());
        }
        for ch in fragment.chars() {
            if (' '..='~').contains(&ch) {
                w.write_all(&[ch as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Value {
        map_output(HandlerOutput::new(v)).to_value()
    }

    #[test]
    fn output_mapping_matches_the_sdk() {
        assert_eq!(map(json!({"a": 1})), json!({"output": {"a": 1}}));
        assert_eq!(map(json!({"output": 5})), json!({"output": {"output": 5}}));
        assert_eq!(map(json!({"error": "msg"})), json!({"error": "msg"}));
        assert_eq!(
            map(json!({"error": "failed", "details": [1]})),
            json!({"output": {"details": [1]}, "error": "failed"})
        );
        assert_eq!(
            map(json!({"error": ["a", "b"]})),
            json!({"error": ["a", "b"]})
        );
        assert_eq!(
            map(json!({"error": "", "x": 1})),
            json!({"output": {"x": 1}})
        );
        assert_eq!(
            map(json!({"refresh_worker": true, "x": 1})),
            json!({"output": {"x": 1}, "stopPod": true})
        );
        assert_eq!(map(json!({"refresh_worker": false})), json!({}));
        assert_eq!(map(json!({})), json!({}));
        assert_eq!(map(json!(true)), json!({"output": true}));
        assert_eq!(map(json!(null)), json!({"output": null}));
        assert_eq!(map(json!([1, 2])), json!({"output": [1, 2]}));
        assert_eq!(map(json!("s")), json!({"output": "s"}));
        let refreshed = map_output(HandlerOutput::new(json!(1)).with_refresh_worker());
        assert_eq!(refreshed.to_json(), r#"{"output": 1, "stopPod": true}"#);
    }

    #[test]
    fn body_text_uses_python_separators_and_keeps_unicode() {
        let body = map_output(HandlerOutput::new(json!({"b": [1, 2], "a": "é"})));
        assert_eq!(body.to_json(), r#"{"output": {"a": "é", "b": [1, 2]}}"#);
        let body = map_output(HandlerOutput::new(json!({"error": "x", "k": 1})));
        assert_eq!(body.to_json(), r#"{"output": {"k": 1}, "error": "x"}"#);
    }

    #[test]
    fn error_json_is_an_ascii_python_style_string() {
        let who = WorkerIdentity {
            hostname: "pod-1234abcd".into(),
            worker_id: "pod".into(),
        };
        let err = JobError::new("InvalidInput", "bad \"width\" é 😀");
        let body = map_error(&err, &who);
        let Value::String(s) = body.error.clone().unwrap() else {
            panic!("error must be a string")
        };
        assert!(s.is_ascii());
        assert!(s.starts_with(r#"{"error_type": "InvalidInput", "error_message": "bad \"width\" \u00e9 \ud83d\ude00", "error_traceback": "#), "{s}");
        let parsed: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed["error_message"], "bad \"width\" é 😀");
        assert_eq!(parsed["hostname"], "pod-1234abcd");
        assert_eq!(parsed["worker_id"], "pod");
        assert_eq!(parsed["runpod_version"], SDK_COMPAT_VERSION);
        assert_eq!(
            parsed["error_traceback"],
            "InvalidInput: bad \"width\" é 😀"
        );
        assert!(body.is_error());
        assert!(body.output.is_none());
    }

    #[test]
    fn stream_final_results() {
        let chunks = vec![json!(1), json!({"b": 2})];
        assert_eq!(
            map_stream_final(HandlerOutput::new(Value::Null), chunks.clone(), false).to_value(),
            json!({"output": []})
        );
        assert_eq!(
            map_stream_final(HandlerOutput::new(Value::Null), chunks, true).to_value(),
            json!({"output": [1, {"b": 2}]})
        );
        let err = map_stream_error(&JobError::new("Boom", "it broke"));
        assert_eq!(
            err.to_value(),
            json!({"error": "handler: it broke \ntraceback: Boom: it broke"})
        );
    }
}
