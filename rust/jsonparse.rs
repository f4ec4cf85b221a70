//! A JSON reader that accepts exactly what Python's `json.loads` accepts.
//!
//! Connection files are written by Python tools; `json.dumps` emits `NaN` and
//! `Infinity` for special floats and `json.loads` reads them back, so a strict
//! RFC 8259 parser would reject files every Jupyter tool can read. Likewise a
//! `\ud800` escape is a lone surrogate that `json.loads` keeps, so strings are
//! [`Text`], not `String`. Duplicate keys keep their first position and their
//! last value, as a Python dict does. Integers longer than Python's `int()`
//! reads by default are refused, as `json.loads` refuses them.
//!
//! Reading is linear in the input: one pass, and duplicate keys are found
//! through a hash index. Errors give a line and column and never quote the text.
//!
//! serde_json and jiter were measured for this job and refuse lone-surrogate
//! escapes (their strings are Rust `String`s), which `json.loads` accepts.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::json::{push_code_point, Text, Value};

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 256;

/// The most digits an integer may have: CPython's default
/// `sys.get_int_max_str_digits()`, beyond which `json.loads` raises ValueError.
pub const MAX_INT_DIGITS: usize = 4300;

/// A syntax error: what went wrong and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: Cow<'static, str>,
    pub line: usize,
    pub column: usize,
    /// True when the text simply stopped early (a truncated file).
    pub at_end: bool,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

/// Parse one JSON document (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    parse_surrogatepass(text.as_bytes())
}

/// [`parse`] for text that may hold lone surrogates (a Python str that
/// `str.encode("utf-8", "surrogatepass")` turned into bytes).
pub fn parse_text(text: &Text) -> Result<Value, SyntaxError> {
    parse_surrogatepass(text.as_bytes())
}

/// Parse surrogatepass UTF-8: strings are copied from it byte for byte, so
/// they are surrogatepass UTF-8 too.
pub(crate) fn parse_surrogatepass(bytes: &[u8]) -> Result<Value, SyntaxError> {
    let mut reader = Reader { bytes, pos: 0 };
    reader.skip_ws();
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.pos < reader.bytes.len() {
        return Err(reader.error("extra data after the document"));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn error(&self, message: impl Into<Cow<'static, str>>) -> SyntaxError {
        let upto = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = upto.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Characters, not bytes: every byte but a UTF-8 continuation byte
        // starts one (a surrogate's three bytes included).
        let column = upto[line_start..]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count()
            + 1;
        SyntaxError {
            message: message.into(),
            line,
            column,
            at_end: self.pos >= self.bytes.len(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        if self.bytes[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        match self.peek() {
            None => Err(self.error("expected a value")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.list(depth),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'-' | b'0'..=b'9') => {
                if self.eat(b"-Infinity") {
                    return Ok(Value::Float(f64::NEG_INFINITY));
                }
                self.number()
            }
            Some(_) => {
                let literals: [(&[u8], Value); 5] = [
                    (b"null", Value::Null),
                    (b"true", Value::Bool(true)),
                    (b"false", Value::Bool(false)),
                    (b"NaN", Value::Float(f64::NAN)),
                    (b"Infinity", Value::Float(f64::INFINITY)),
                ];
                for (word, value) in literals {
                    if self.eat(word) {
                        return Ok(value);
                    }
                }
                Err(self.error("expected a value"))
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut entries: Vec<(Text, Value)> = Vec::new();
        self.skip_ws();
        if self.eat(b"}") {
            return Ok(Value::Object(entries));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if !self.eat(b":") {
                return Err(self.error("expected ':' after a key"));
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_ws();
            if self.eat(b"}") {
                return Ok(Value::Object(merge_duplicates(entries)));
            }
            if !self.eat(b",") {
                return Err(self.error("expected ',' or '}' in an object"));
            }
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(Value::List(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            if self.eat(b"]") {
                return Ok(Value::List(items));
            }
            if !self.eat(b",") {
                return Err(self.error("expected ',' or ']' in a list"));
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        self.eat(b"-");
        let digits_start = self.pos;
        if self.eat(b"0") {
            // A leading zero stands alone, as in Python: "01" stops after "0".
        } else if self.digits() == 0 {
            return Err(self.error("expected a digit"));
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.bytes.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let mark = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                self.pos = mark;
            } else {
                is_float = true;
            }
        }
        // The slices are ASCII digits, signs, '.' and 'e': valid UTF-8.
        if is_float {
            let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or("NaN");
            return Ok(Value::Float(text.parse::<f64>().unwrap_or(f64::NAN)));
        }
        let count = int_end - digits_start;
        if count > MAX_INT_DIGITS {
            self.pos = start;
            return Err(self.error(format!(
                "an integer of {count} digits: Python reads at most {MAX_INT_DIGITS}"
            )));
        }
        let digits = std::str::from_utf8(&self.bytes[start..int_end]).unwrap_or("0");
        Ok(Value::Int(if digits == "-0" {
            "0".into()
        } else {
            digits.into()
        }))
    }

    /// Exactly four hex digits, as CPython's scanner wants: no sign, no space.
    fn hex4_at(&self, pos: usize) -> Option<u32> {
        let chunk = self.bytes.get(pos..pos + 4)?;
        chunk.iter().try_fold(0u32, |acc, &b| {
            let digit = char::from(b).to_digit(16)?;
            Some((acc << 4) | digit)
        })
    }

    fn string(&mut self) -> Result<Text, SyntaxError> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // Stopped on an ASCII byte: the run is whole characters of the input.
            out.extend_from_slice(&self.bytes[start..self.pos]);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Text::from_surrogatepass_unchecked(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => push_code_point(&mut out, self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape"));
                        }
                    }
                }
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    /// The code point of `\uXXXX` (the reader is past the `u`): a high
    /// surrogate directly followed by a `\u` escape of a low one is the pair's
    /// code point; any other surrogate stands alone, as `json.loads` keeps it.
    fn unicode_escape(&mut self) -> Result<u32, SyntaxError> {
        let Some(first) = self.hex4_at(self.pos) else {
            let rest = &self.bytes[self.pos..];
            if rest.len() < 4 && rest.iter().all(u8::is_ascii_hexdigit) {
                // A file cut short in the middle of the escape.
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            }
            return Err(self.error("invalid \\uXXXX escape"));
        };
        self.pos += 4;
        if (0xd800..0xdc00).contains(&first) && self.bytes[self.pos..].starts_with(b"\\u") {
            if let Some(second @ 0xdc00..=0xdfff) = self.hex4_at(self.pos + 2) {
                self.pos += 6;
                return Ok(0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00));
            }
        }
        Ok(first)
    }
}

/// A Python dict's view of an object's entries: each key at its first
/// position with its last value. Linear: a hash index, no search. std's
/// randomly keyed SipHash, so keys chosen to collide cannot make it quadratic.
fn merge_duplicates(mut entries: Vec<(Text, Value)>) -> Vec<(Text, Value)> {
    if entries.len() < 2 {
        return entries;
    }
    // (later index, first index) for every repeated key, in text order.
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    {
        let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            match first.entry(key.as_bytes()) {
                Entry::Occupied(seen) => repeats.push((i, *seen.get())),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
    }
    if repeats.is_empty() {
        return entries;
    }
    let mut keep = vec![true; entries.len()];
    for (later, first) in repeats {
        // In text order, so the last value written is the last one read.
        let value = std::mem::replace(&mut entries[later].1, Value::Null);
        entries[first].1 = value;
        keep[later] = false;
    }
    let mut index = 0;
    entries.retain(|_| {
        let kept = keep[index];
        index += 1;
        kept
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> Text {
        Text::from_surrogatepass(bytes.to_vec()).expect("surrogatepass UTF-8")
    }

    #[test]
    fn python_extensions_and_duplicates() {
        let value =
            parse(r#"{"a": NaN, "b": [Infinity, -Infinity], "a": 2, "c": -0}"#).expect("parse");
        let Value::Object(entries) = value else {
            panic!("object")
        };
        assert_eq!(entries[0], ("a".into(), Value::Int("2".into())));
        assert_eq!(entries[2], ("c".into(), Value::Int("0".into())));
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn duplicates_keep_first_position_and_last_value() {
        let value = parse(r#"{"x": 1, "y": 2, "x": 3, "z": 4, "y": 5, "x": 6}"#).expect("parse");
        assert_eq!(
            value,
            Value::Object(vec![
                ("x".into(), Value::Int("6".into())),
                ("y".into(), Value::Int("5".into())),
                ("z".into(), Value::Int("4".into())),
            ])
        );
        // Escaped and literal spellings of one key are one key.
        let value = parse(r#"{"\u0061": 1, "a": 2}"#).expect("parse");
        assert_eq!(
            value,
            Value::Object(vec![("a".into(), Value::Int("2".into()))])
        );
    }

    #[test]
    fn many_keys_and_many_duplicates() {
        let mut doc = String::from("{");
        for i in 0..200_000 {
            if i > 0 {
                doc.push(',');
            }
            doc.push_str(&format!("\"{}\":{i}", i % 100_000));
        }
        doc.push('}');
        let Value::Object(entries) = parse(&doc).expect("parse") else {
            panic!("object")
        };
        assert_eq!(entries.len(), 100_000);
        assert_eq!(entries[7], ("7".into(), Value::Int("100007".into())));
    }

    #[test]
    fn strings_and_numbers() {
        assert_eq!(
            parse(r#""\u00e9\ud83d\ude00\n\/""#).expect("parse"),
            Value::Str("é😀\n/".into())
        );
        assert_eq!(parse("1.5e3").expect("parse"), Value::Float(1500.0));
        assert_eq!(
            parse("123456789012345678901234567890").expect("parse"),
            Value::Int("123456789012345678901234567890".into())
        );
    }

    #[test]
    fn lone_surrogates_are_kept_as_json_loads_keeps_them() {
        assert_eq!(
            parse(r#""\ud800""#).expect("parse"),
            Value::Str(text(b"\xed\xa0\x80"))
        );
        // A high surrogate not followed by a low one stands alone; so does a
        // low one, and a pair of highs is two code points.
        assert_eq!(
            parse(r#""\ud800\u0041\udc00\udbff\udbff""#).expect("parse"),
            Value::Str(text(b"\xed\xa0\x80A\xed\xb0\x80\xed\xaf\xbf\xed\xaf\xbf"))
        );
        let value = parse(r#"{"\udfff": 1, "\udfff": 2}"#).expect("parse");
        assert_eq!(
            value,
            Value::Object(vec![(text(b"\xed\xbf\xbf"), Value::Int("2".into()))])
        );
        let surrogates = text(b"\xed\xa0\x80x");
        assert_eq!(surrogates.as_str(), None);
        assert_eq!(
            parse_text(&text(b"\"\xed\xa0\x80x\"")).expect("parse"),
            Value::Str(surrogates)
        );
    }

    #[test]
    fn unicode_escapes_take_exactly_four_hex_digits() {
        for bad in [
            r#""\u+041""#,
            r#""\u-041""#,
            r#""\u 041""#,
            r#""\u004""#,
            r#""\u00g1""#,
            r#""\ud800\u+c00""#,
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.at_end, "{bad}");
        }
        assert_eq!(
            parse(r#""\u00AF""#).expect("parse"),
            Value::Str("\u{af}".into())
        );
        assert!(parse(r#""\u00a"#).expect_err("truncated").at_end);
    }

    #[test]
    fn integers_stop_at_pythons_digit_limit() {
        let most = "9".repeat(MAX_INT_DIGITS);
        assert_eq!(parse(&most).expect("parse"), Value::Int(most.clone()));
        assert!(parse(&format!("-{most}")).is_ok());
        let err = parse(&format!("[1, {most}1]")).expect_err("too long");
        assert!(err.message.contains("4301 digits"), "{err}");
        assert_eq!(err.column, 5);
        assert!(err.to_string().len() < 100);
        // Floats have no such limit in Python either.
        assert!(parse(&format!("{most}1.5")).is_ok());
    }

    #[test]
    fn errors_have_positions_and_truncation_is_flagged() {
        let err = parse("{\n  \"a\": 1,").expect_err("truncated");
        assert!(err.at_end);
        assert_eq!(err.line, 2);
        let err = parse("[\"é\u{1F600}\", x]").expect_err("bad value");
        assert_eq!((err.line, err.column), (1, 8));
        for bad in [
            "",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "\"\u{1}\"",
            "\"\\x\"",
            "[1] x",
            "1.",
            "-",
            "\u{feff}{}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(1000);
        assert!(parse(&deep).is_err());
    }
}
