//! Connection files: the typed record, its JSON form, validation, and the
//! secure atomic write.
//!
//! The JSON is byte-identical to jupyter_client's (same keys, same order, same
//! `json.dumps(indent=2)` layout). Files are written to a 0600 temporary file
//! created with O_EXCL beside the target and renamed over it, so a reader sees
//! the old file or the whole new one, and the key is never readable by others.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::json::{dumps, Text, Value};

/// The largest connection file read, in bytes. A real one is a few hundred
/// bytes; anything past this bound is refused before it is parsed, so a huge
/// or hostile file costs neither time nor memory.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The five channels, in the order jupyter_client writes them.
pub const PORT_FIELDS: [&str; 5] = [
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
];

/// A kernel's connection information, as written to a connection file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionInfo {
    /// shell, iopub, stdin, control, hb: the order of [`PORT_FIELDS`].
    pub ports: [u16; 5],
    pub ip: String,
    pub key: String,
    pub transport: String,
    pub signature_scheme: String,
    pub kernel_name: String,
    pub curve_publickey: Option<String>,
    pub curve_secretkey: Option<String>,
    /// Extra keys, written after the standard ones in the caller's order.
    pub extra: Vec<(Text, Value)>,
}

impl ConnectionInfo {
    /// The JSON object, in jupyter_client's key order.
    pub fn to_value(&self) -> Value {
        let mut entries: Vec<(Text, Value)> = Vec::with_capacity(12 + self.extra.len());
        for (name, port) in PORT_FIELDS.iter().zip(self.ports) {
            entries.push(((*name).into(), Value::Int(port.to_string())));
        }
        let strings = [
            ("ip", &self.ip),
            ("key", &self.key),
            ("transport", &self.transport),
            ("signature_scheme", &self.signature_scheme),
            ("kernel_name", &self.kernel_name),
        ];
        for (name, value) in strings {
            entries.push((name.into(), Value::Str(value.as_str().into())));
        }
        if let Some(public) = &self.curve_publickey {
            entries.push(("curve_publickey".into(), Value::Str(public.as_str().into())));
        }
        if let Some(secret) = &self.curve_secretkey {
            entries.push(("curve_secretkey".into(), Value::Str(secret.as_str().into())));
        }
        // Like `cfg.update(kwargs)`: an extra key that repeats a standard one
        // replaces its value in place rather than adding a second entry. Extra
        // keys come from one dict, so only the standard ones need a look.
        let standard = entries.len();
        for (key, value) in &self.extra {
            match entries[..standard].iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => entries.push((key.clone(), value.clone())),
            }
        }
        Value::Object(entries)
    }

    /// Validate, then render the file's exact bytes.
    pub fn to_json(&self, digests: &[String]) -> Result<String> {
        let value = self.to_value();
        validate(&value, digests)?;
        Ok(dumps(&value))
    }
}

/// Check every standard field that is present. Missing fields are allowed, as
/// jupyter_client allows them; present ones must have the right type and range.
pub fn validate(value: &Value, digests: &[String]) -> Result<()> {
    let Value::Object(entries) = value else {
        return Err(Error::file(format!(
            "expected a JSON object at the top level, got {}",
            value.type_name()
        )));
    };
    for (key, item) in entries {
        // A key with a lone surrogate is no standard field.
        if let Some(key) = key.as_str() {
            validate_field(key, item, digests)?;
        }
    }
    Ok(())
}

fn validate_field(key: &str, item: &Value, digests: &[String]) -> Result<()> {
    if PORT_FIELDS.contains(&key) {
        return match item {
            Value::Int(digits) => match digits.parse::<i64>() {
                Ok(port) if (0..=65_535).contains(&port) => Ok(()),
                _ => Err(Error::field(
                    key,
                    format!(
                        "port {} is out of range: expected 0..65535",
                        shown_number(digits)
                    ),
                )),
            },
            other => Err(Error::field(
                key,
                format!(
                    "expected an integer port 0..65535, got {}",
                    other.type_name()
                ),
            )),
        };
    }
    let text = match key {
        "ip" | "key" | "transport" | "signature_scheme" | "kernel_name" | "curve_publickey"
        | "curve_secretkey" => match item {
            Value::Str(text) => text.to_string_lossy(),
            other => {
                return Err(Error::field(
                    key,
                    format!("expected a string, got {}", other.type_name()),
                ))
            }
        },
        _ => return Ok(()),
    };
    match key {
        "transport" if text != "tcp" && text != "ipc" => Err(Error::field(
            key,
            format!(
                "unknown transport {}: expected \"tcp\" or \"ipc\"",
                shown(&text)
            ),
        )),
        "signature_scheme" => check_scheme(&text, digests),
        // Only transport and scheme values are ever quoted back; the key and the
        // curve secret are secrets and other strings need no check.
        _ => Ok(()),
    }
}

fn check_scheme(scheme: &str, digests: &[String]) -> Result<()> {
    let digest = scheme.strip_prefix("hmac-").ok_or_else(|| {
        Error::field(
            "signature_scheme",
            format!(
                "unsupported scheme {}: expected \"hmac-<digest>\"",
                shown(scheme)
            ),
        )
    })?;
    if digests.iter().any(|d| d == digest) {
        Ok(())
    } else {
        Err(Error::field(
            "signature_scheme",
            format!(
                "unknown digest {} in {}: expected one of {}",
                shown(digest),
                shown(scheme),
                digests.join(", ")
            ),
        ))
    }
}

/// How many characters of a value a message may quote.
const SHOWN_CHARS: usize = 40;

/// A non-secret value quoted for a message, cut short (and its length said)
/// so a huge value cannot flood the error.
fn shown(text: &str) -> String {
    let mut chars = text.chars();
    let mut cut: String = chars.by_ref().take(SHOWN_CHARS).collect();
    match chars.count() {
        0 => format!("{cut:?}"),
        rest => {
            cut.push('…');
            format!("{cut:?} ({} characters)", SHOWN_CHARS + rest)
        }
    }
}

/// An integer's digits for a message, cut short like [`shown`].
fn shown_number(digits: &str) -> String {
    const SHOWN_DIGITS: usize = 20;
    match digits.get(..SHOWN_DIGITS) {
        Some(head) if digits.len() > SHOWN_DIGITS => {
            let count = digits.trim_start_matches('-').len();
            format!("{head}… ({count} digits)")
        }
        _ => digits.to_owned(),
    }
}

/// Refuse text longer than [`MAX_FILE_BYTES`] before reading it as JSON.
fn check_size(what: &str, bytes: usize) -> Result<()> {
    if bytes > MAX_FILE_BYTES {
        return Err(Error::file(format!(
            "{what} {bytes} bytes, more than a connection file may have \
             ({MAX_FILE_BYTES} bytes); refused without parsing it"
        )));
    }
    Ok(())
}

/// Parse and validate connection-file text.
pub fn parse(text: &str, digests: &[String]) -> Result<Value> {
    parse_surrogatepass(text.as_bytes(), digests)
}

/// [`parse`] for text holding lone surrogates (a Python str that
/// `str.encode("utf-8", "surrogatepass")` made into bytes), as `json.loads`
/// reads it.
pub fn parse_text(text: &Text, digests: &[String]) -> Result<Value> {
    parse_surrogatepass(text.as_bytes(), digests)
}

fn parse_surrogatepass(text: &[u8], digests: &[String]) -> Result<Value> {
    check_size("the text is", text.len())?;
    if text
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(Error::file(
            "the file is empty (was it read while being written by another tool?)",
        ));
    }
    let value = crate::jsonparse::parse_surrogatepass(text).map_err(|e| {
        if e.at_end {
            Error::file(format!("not valid JSON: it ends early ({e}); truncated?"))
        } else {
            Error::file(format!("not valid JSON ({e})"))
        }
    })?;
    validate(&value, digests)?;
    Ok(value)
}

/// Read, parse and validate the connection file at `path`. A file larger than
/// [`MAX_FILE_BYTES`] is refused before it is parsed; no more than that bound
/// (and one byte) is ever read, so a file that grows meanwhile cannot get by.
pub fn read(path: &Path, digests: &[String]) -> Result<Value> {
    let io_error = |e| Error::io("reading connection file", path, e);
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    // Lossless: usize is at least 32 bits and the bound is far below 2^32.
    let bound = MAX_FILE_BYTES as u64;
    if size > bound {
        return Err(Error::file(format!(
            "the file is {size} bytes, more than a connection file may have \
             ({MAX_FILE_BYTES} bytes); refused without reading it"
        ))
        .in_file(path));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
    file.take(bound + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::file(format!(
            "the file grew past {MAX_FILE_BYTES} bytes while being read, more than a \
             connection file may have; refused without parsing it"
        ))
        .in_file(path));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::file("not valid UTF-8 text").in_file(path))?;
    parse(text, digests).map_err(|e| e.in_file(path))
}

/// Write `info` to `path` atomically and privately, then set the sticky bit on
/// its directory as jupyter_client does.
pub fn write(path: &Path, info: &ConnectionInfo, digests: &[String]) -> Result<()> {
    let text = info.to_json(digests).map_err(|e| e.in_file(path))?;
    write_atomic(path, text.as_bytes())?;
    set_sticky_bit(path);
    Ok(())
}

/// Write `contents` to `path` so that no reader ever sees a partial file and the
/// file is never readable by anyone else: temp file (0600, O_EXCL, beside the
/// target) then rename. A symlink at `path` is replaced, not followed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let (tmp_path, mut file) = create_temp_beside(path)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.flush())
        .map_err(|e| Error::io("writing connection file", path, e));
    drop(file);
    let renamed = written.and_then(|()| {
        std::fs::rename(&tmp_path, path).map_err(|e| Error::io("replacing", path, e))
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    renamed
}

fn create_temp_beside(path: &Path) -> Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} names no file", path.display())))?
        .to_string_lossy();
    let pid = crate::process::my_pid();
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            // Created 0600: the umask can only take bits away, never add any, so
            // the file is private from its first instant without a chmod.
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(Error::io("creating temporary file in", dir, e)),
        }
    }
    Err(Error::io(
        "creating temporary file in",
        dir,
        last_err.unwrap_or_else(|| ErrorKind::AlreadyExists.into()),
    ))
}

/// Sticky bit on the file's directory so only owners may delete its files.
/// Best effort, as in jupyter_client: a directory we do not own is left as is.
/// A farm writes thousands of files into one directory, so directories already
/// seen sticky are remembered instead of stat'ed on every write.
fn set_sticky_bit(path: &Path) {
    static STICKY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    let Ok(mut seen) = STICKY.lock() else {
        return;
    };
    if seen.iter().any(|d| d == dir) {
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode();
        let sticky = mode & 0o1000 != 0
            || std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o1000))
                .is_ok();
        if sticky && seen.len() < 64 {
            seen.push(dir.to_path_buf());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn digests() -> Vec<String> {
        vec!["sha256".into(), "sha512".into()]
    }

    fn sample() -> ConnectionInfo {
        ConnectionInfo {
            ports: [50001, 50002, 50003, 50005, 50004],
            ip: "127.0.0.1".into(),
            key: "s3cret-key".into(),
            transport: "tcp".into(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: "python3".into(),
            curve_publickey: None,
            curve_secretkey: None,
            extra: vec![("extra".into(), Value::Float(0.5))],
        }
    }

    #[test]
    fn json_matches_jupyter_client_layout() {
        let text = sample().to_json(&digests()).expect("valid");
        let expected = "{\n  \"shell_port\": 50001,\n  \"iopub_port\": 50002,\n  \"stdin_port\": 50003,\n  \"control_port\": 50005,\n  \"hb_port\": 50004,\n  \"ip\": \"127.0.0.1\",\n  \"key\": \"s3cret-key\",\n  \"transport\": \"tcp\",\n  \"signature_scheme\": \"hmac-sha256\",\n  \"kernel_name\": \"python3\",\n  \"extra\": 0.5\n}";
        assert_eq!(text, expected);
    }

    #[test]
    fn write_then_read_round_trips_privately() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kernel-1.json");
        write(&path, &sample(), &digests()).expect("write");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").mode() & 0o777,
            0o600
        );
        assert_eq!(read(&path, &digests()).expect("read"), sample().to_value());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn symlink_at_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let path = dir.path().join("kernel.json");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write(&path, &sample(), &digests()).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert!(!std::fs::symlink_metadata(&path)
            .expect("lstat")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn invalid_fields_are_named_and_secrets_never_shown() {
        let cases = [
            (r#"{"shell_port": 70000}"#, "shell_port"),
            (r#"{"hb_port": "1"}"#, "hb_port"),
            (r#"{"hb_port": 1.5}"#, "hb_port"),
            (r#"{"transport": "udp"}"#, "transport"),
            (r#"{"signature_scheme": "hmac-nope"}"#, "signature_scheme"),
            (r#"{"signature_scheme": "rsa-sha256"}"#, "signature_scheme"),
            (r#"{"key": 12}"#, "key"),
            (r#"{"ip": null}"#, "ip"),
        ];
        for (text, field) in cases {
            match parse(text, &digests()) {
                Err(Error::ConnectionFile { field: Some(f), .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected a field error, got {other:?}"),
            }
        }
        let err =
            parse(r#"{"key": "topsecret", "shell_port": -1}"#, &digests()).expect_err("bad port");
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn empty_truncated_and_non_object_files_are_errors() {
        for text in ["", "  \n", "{\"shell_port\": 1,", "[1, 2]", "not json"] {
            assert!(
                matches!(parse(text, &digests()), Err(Error::ConnectionFile { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn oversized_files_are_refused_unread_naming_their_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("huge.json");
        // Sparse: 8 GiB that would take long and much memory to read.
        File::create(&path)
            .and_then(|f| f.set_len(8 << 30))
            .expect("sparse file");
        let message = read(&path, &digests()).expect_err("too big").to_string();
        assert!(message.contains("8589934592 bytes"), "{message}");
        assert!(message.len() < 200 + path.as_os_str().len(), "{message}");

        let mut text = String::from("{\"extra\": \"");
        text.push_str(&"x".repeat(MAX_FILE_BYTES));
        text.push_str("\"}");
        let message = parse(&text, &digests()).expect_err("too big").to_string();
        assert!(
            message.contains(&format!("{} bytes", text.len())),
            "{message}"
        );
        let exactly = format!("{{\"extra\": \"{}\"}}", "x".repeat(MAX_FILE_BYTES - 13));
        assert_eq!(exactly.len(), MAX_FILE_BYTES);
        assert!(parse(&exactly, &digests()).is_ok());
    }

    #[test]
    fn a_file_that_grows_while_read_stops_at_the_bound() {
        // /dev/zero says it is empty and never ends.
        let message = read(Path::new("/dev/zero"), &digests())
            .expect_err("endless")
            .to_string();
        assert!(message.contains("grew past"), "{message}");
    }

    #[test]
    fn messages_quote_short_excerpts_only() {
        let long_port = format!(r#"{{"shell_port": {}}}"#, "7".repeat(4300));
        let message = parse(&long_port, &digests())
            .expect_err("range")
            .to_string();
        assert!(message.contains("(4300 digits)"), "{message}");
        assert!(message.len() < 200, "{message}");
        let long_port = format!(r#"{{"shell_port": -{}}}"#, "7".repeat(4301));
        let message = parse(&long_port, &digests())
            .expect_err("digits")
            .to_string();
        assert!(message.contains("4301 digits"), "{message}");
        assert!(message.len() < 200, "{message}");
        let transport = format!(r#"{{"transport": "{}"}}"#, "t".repeat(100_000));
        let message = parse(&transport, &digests())
            .expect_err("transport")
            .to_string();
        assert!(message.contains("(100000 characters)"), "{message}");
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn surrogate_keys_and_values_are_read() {
        let text = Text::from_surrogatepass(
            b"{\"\xed\xa0\x80\": 1, \"kernel_name\": \"\\udfff\", \"transport\": \"\\ud800\"}"
                .to_vec(),
        )
        .expect("surrogatepass");
        let err = parse_text(&text, &digests()).expect_err("transport");
        assert!(
            matches!(&err, Error::ConnectionFile { field: Some(f), .. } if f == "transport"),
            "{err}"
        );
        assert!(err.to_string().contains('\u{fffd}'), "{err}");
    }

    #[test]
    fn unwritable_directory_leaves_nothing_behind() {
        let missing = Path::new("/nonexistent-kernel-connect-dir/kernel.json");
        assert!(matches!(
            write(missing, &sample(), &digests()),
            Err(Error::Io { .. })
        ));
    }
}
