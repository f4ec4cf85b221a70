//! A JSON value and a writer whose bytes equal Python's `json.dumps(v, indent=2)`.
//!
//! Connection files must be byte-identical to jupyter_client's, which writes
//! with the standard library's defaults: `ensure_ascii=True`, separators
//! `(",", ": ")` under indent, `float.__repr__` for floats, NaN/Infinity
//! allowed. This module reproduces exactly that.

use std::borrow::Cow;
use std::fmt::Write;

/// A JSON value. Integers keep their decimal digits (Python ints are unbounded);
/// objects keep insertion order and may repeat keys, as `json.dumps` would write them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(Text),
    List(Vec<Value>),
    Object(Vec<(Text, Value)>),
}

/// A string as Python holds it: any code points, lone surrogates included
/// (`json.loads('"\\ud800"')` is a valid str, so a Rust `String` cannot hold
/// every string a connection file may carry).
///
/// The bytes are UTF-8 in which a surrogate code point may also appear, encoded
/// on its own in three bytes: what `str.encode("utf-8", "surrogatepass")`
/// produces and `bytes.decode("utf-8", "surrogatepass")` reads back. That
/// encoding is one-to-one, so equal texts are equal strings in Python. Without
/// surrogates it is plain UTF-8 and [`Text::as_str`] gives it as a `str`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Text(Vec<u8>);

impl Text {
    /// The text as a `str`, or None when it holds a lone surrogate.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The surrogatepass UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes from `str.encode("utf-8", "surrogatepass")`, checked: None unless
    /// they are UTF-8 with (at most) surrogates encoded on their own.
    pub fn from_surrogatepass(bytes: Vec<u8>) -> Option<Text> {
        is_surrogatepass(&bytes).then_some(Text(bytes))
    }

    /// Bytes the caller built as surrogatepass UTF-8 (the JSON reader).
    pub(crate) fn from_surrogatepass_unchecked(bytes: Vec<u8>) -> Text {
        debug_assert!(is_surrogatepass(&bytes));
        Text(bytes)
    }

    /// The text with each lone surrogate replaced by U+FFFD, for messages.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        match self.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(
                self.code_points()
                    .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect(),
            ),
        }
    }

    /// The code points, lone surrogates included.
    pub fn code_points(&self) -> impl Iterator<Item = u32> + '_ {
        let bytes = &self.0;
        let mut pos = 0;
        std::iter::from_fn(move || {
            let (code, len) = decode_code_point(bytes.get(pos..)?)?;
            pos += len;
            Some(code)
        })
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s.into_bytes())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.as_bytes().to_vec())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Append the UTF-8 form of `code`, a surrogate encoded like any other code
/// point below U+10000 (as surrogatepass does). `code` must be <= U+10FFFF.
pub(crate) fn push_code_point(out: &mut Vec<u8>, code: u32) {
    // Each `as u8` keeps bits the masks and shifts have already bounded.
    match code {
        0..=0x7f => out.push(code as u8),
        0x80..=0x7ff => {
            out.extend_from_slice(&[0xc0 | (code >> 6) as u8, 0x80 | (code & 0x3f) as u8])
        }
        0x800..=0xffff => out.extend_from_slice(&[
            0xe0 | (code >> 12) as u8,
            0x80 | ((code >> 6) & 0x3f) as u8,
            0x80 | (code & 0x3f) as u8,
        ]),
        _ => out.extend_from_slice(&[
            0xf0 | (code >> 18) as u8,
            0x80 | ((code >> 12) & 0x3f) as u8,
            0x80 | ((code >> 6) & 0x3f) as u8,
            0x80 | (code & 0x3f) as u8,
        ]),
    }
}

/// The first code point of surrogatepass UTF-8 and its length in bytes.
fn decode_code_point(bytes: &[u8]) -> Option<(u32, usize)> {
    let lead = *bytes.first()?;
    let len = match lead {
        0..=0x7f => return Some((u32::from(lead), 1)),
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let tail = bytes.get(1..len)?;
    let first = u32::from(lead) & (0x7f >> len);
    let code = tail
        .iter()
        .fold(first, |acc, &b| (acc << 6) | (u32::from(b) & 0x3f));
    Some((code, len))
}

/// True for UTF-8 in which surrogates may also appear, each encoded on its own.
fn is_surrogatepass(mut bytes: &[u8]) -> bool {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(_) => return true,
            Err(e) => {
                let rest = &bytes[e.valid_up_to()..];
                match rest {
                    [0xed, 0xa0..=0xbf, 0x80..=0xbf, ..] => bytes = &rest[3..],
                    _ => return false,
                }
            }
        }
    }
}

impl Value {
    /// Python-ish type name, for error messages that must not echo the value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Object(_) => "object",
        }
    }
}

/// `json.dumps(value, indent=2)`, byte for byte.
pub fn dumps(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, 0);
    out
}

fn newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn write_value(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(digits) => out.push_str(digits),
        Value::Float(f) => write_float(out, *f),
        Value::Str(text) => write_text(out, text),
        Value::List(items) if items.is_empty() => out.push_str("[]"),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, level + 1);
                write_value(out, item, level + 1);
            }
            newline_indent(out, level);
            out.push(']');
        }
        Value::Object(entries) if entries.is_empty() => out.push_str("{}"),
        Value::Object(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, level + 1);
                write_text(out, key);
                out.push_str(": ");
                write_value(out, item, level + 1);
            }
            newline_indent(out, level);
            out.push('}');
        }
    }
}

/// A JSON string with `ensure_ascii=True`: everything outside ' '..='~' escaped.
pub fn write_str(out: &mut String, s: &str) {
    write_code_points(out, s.chars().map(u32::from));
}

/// [`write_str`] for a [`Text`]: a lone surrogate is written as its own
/// `\udXXX` escape, as `json.dumps` writes it.
pub fn write_text(out: &mut String, text: &Text) {
    write_code_points(out, text.code_points());
}

fn write_code_points(out: &mut String, code_points: impl Iterator<Item = u32>) {
    out.push('"');
    for code in code_points {
        match code {
            0x22 => out.push_str("\\\""),
            0x5c => out.push_str("\\\\"),
            0x0a => out.push_str("\\n"),
            0x0d => out.push_str("\\r"),
            0x09 => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            // Printable ASCII: the cast cannot truncate.
            0x20..=0x7e => out.push(code as u8 as char),
            // Writing to a String cannot fail.
            0..=0xffff => {
                let _ = write!(out, "\\u{code:04x}");
            }
            _ => {
                let high = 0xd800 + ((code - 0x10000) >> 10);
                let low = 0xdc00 + ((code - 0x10000) & 0x3ff);
                let _ = write!(out, "\\u{high:04x}\\u{low:04x}");
            }
        }
    }
    out.push('"');
}

/// `float.__repr__`: shortest round-trip digits, exponent form when the decimal
/// point position is <= -4 or > 16, as CPython's `format_float_short` does.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddddde<exp>".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else if decpt < n {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    } else {
        out.push_str(&digits);
        for _ in 0..(decpt - n) {
            out.push('0');
        }
        out.push_str(".0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (123456789.125, "123456789.125"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (value, expected) in cases {
            assert_eq!(float(value), expected, "{value:e}");
        }
    }

    #[test]
    fn strings_are_ascii_escaped() {
        let mut s = String::new();
        write_str(&mut s, "a\"b\\c\n\u{7f}é😀\u{1}");
        assert_eq!(s, r#""a\"b\\c\n\u007f\u00e9\ud83d\ude00\u0001""#);
    }

    #[test]
    fn lone_surrogates_are_written_as_json_dumps_writes_them() {
        let text = Text::from_surrogatepass(b"\xed\xa0\x80a\xed\xbf\xbf\xf0\x9f\x98\x80".to_vec())
            .expect("surrogatepass");
        assert_eq!(text.as_str(), None);
        let mut s = String::new();
        write_text(&mut s, &text);
        // json.dumps("\ud800a\udfff\U0001f600")
        assert_eq!(s, r#""\ud800a\udfff\ud83d\ude00""#);
        assert_eq!(text.to_string_lossy(), "\u{fffd}a\u{fffd}\u{1f600}");
    }

    #[test]
    fn surrogatepass_bytes_are_checked() {
        for good in [
            &b""[..],
            b"abc",
            b"\xed\xa0\x80",
            b"\xed\xbf\xbfz",
            "é😀".as_bytes(),
        ] {
            assert!(
                Text::from_surrogatepass(good.to_vec()).is_some(),
                "{good:?}"
            );
        }
        for bad in [
            &b"\xff"[..],
            b"\xed\xa0",
            b"\xc0\x80",
            b"a\xed\xa0\x80\x80",
            b"\xf4\x90\x80\x80",
        ] {
            assert!(Text::from_surrogatepass(bad.to_vec()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn every_code_point_round_trips() {
        for code in 0..=0x10ffff_u32 {
            let mut bytes = Vec::new();
            push_code_point(&mut bytes, code);
            if let Some(ch) = char::from_u32(code) {
                assert_eq!(bytes, ch.to_string().as_bytes());
            }
            let text = Text::from_surrogatepass(bytes).expect("surrogatepass");
            assert_eq!(text.code_points().collect::<Vec<_>>(), [code]);
        }
    }

    #[test]
    fn nested_layout_matches_python() {
        let value = Value::Object(vec![
            ("a".into(), Value::Int("1".into())),
            (
                "b".into(),
                Value::List(vec![
                    Value::Null,
                    Value::Object(vec![]),
                    Value::List(vec![]),
                ]),
            ),
            (
                "c".into(),
                Value::Object(vec![("d".into(), Value::Bool(true))]),
            ),
        ]);
        let expected = "{\n  \"a\": 1,\n  \"b\": [\n    null,\n    {},\n    []\n  ],\n  \"c\": {\n    \"d\": true\n  }\n}";
        assert_eq!(dumps(&value), expected);
    }
}
