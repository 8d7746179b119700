//! Answering for one file: its type, its SHA-256 as the ETag (as the Hugging Face hub does, which
//! the page checks downloads against), `If-None-Match` (304), and single `Range` requests (206,
//! 416; the page downloads models in ranges and resumes them), `If-Range` included.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{Body, Reply};

/// The request headers that matter for a file.
#[derive(Default)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

pub fn serve(path: &Path, cond: &Conditions, hashes: &HashCache) -> Reply {
    let Ok(file) = File::open(path) else {
        return Reply::text(404, "not found");
    };
    let Ok(meta) = file.metadata() else {
        return Reply::text(500, "cannot read the file");
    };
    if !meta.is_file() {
        return Reply::text(404, "not found");
    }
    let size = meta.len();
    let mut reply = Reply::new(
        200,
        Body::File {
            file,
            start: 0,
            len: size,
        },
    );
    reply.header("Content-Type", mime_type(path));
    reply.header("Accept-Ranges", "bytes");
    reply.header("Cache-Control", "no-cache");
    if let Ok(modified) = meta.modified() {
        reply.header("Last-Modified", &httpdate::fmt_http_date(modified));
    }
    let etag = hashes.sha256(path).ok().map(|h| format!("\"{h}\""));
    if let Some(e) = &etag {
        reply.header("ETag", e);
    }
    if let (Some(inm), Some(e)) = (cond.if_none_match, &etag) {
        let matches = inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == e || t == "*");
        if matches {
            // Content-Length stays that of the whole file, as a 200 would have had.
            reply.status = 304;
            reply.body = Body::None { len: size };
            return reply;
        }
    }
    // If-Range: the range only when the client's copy is this exact file.
    let range_applies = cond
        .if_range
        .is_none_or(|v| etag.as_deref() == Some(v.trim()));
    let Some(range) = cond.range.filter(|_| range_applies) else {
        return reply;
    };
    match parse_range(range, size) {
        RangeSpec::Satisfiable(start, end) => {
            reply.status = 206;
            reply.header("Content-Range", &format!("bytes {start}-{end}/{size}"));
            if let Body::File { start: s, len, .. } = &mut reply.body {
                *s = start;
                *len = end - start + 1;
            }
        }
        RangeSpec::Unsatisfiable => {
            reply.status = 416;
            reply.header("Content-Range", &format!("bytes */{size}"));
            reply.body = Body::None { len: 0 };
        }
        RangeSpec::Ignore => {}
    }
    reply
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Inclusive byte positions.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Malformed, several ranges, or another unit: the whole file is sent.
    Ignore,
}

fn parse_range(header: &str, size: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Ignore;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Satisfiable(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Satisfiable(start, end.min(size - 1))
}

/// Browsers insist on some: `application/wasm` for streaming compilation, `text/javascript` for
/// module workers.
fn mime_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// SHA-256 of served files, computed once per (path, size, modification time). Concurrent
/// requests for a file being hashed wait for the one computation.
#[derive(Default)]
pub struct HashCache {
    entries: Mutex<HashMap<PathBuf, Arc<HashEntry>>>,
}

struct HashEntry {
    key: (u64, Option<SystemTime>),
    value: Mutex<Option<String>>,
}

impl HashCache {
    pub fn sha256(&self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let key = (meta.len(), meta.modified().ok());
        let entry = {
            let mut map = self.entries.lock().unwrap();
            match map.get(path) {
                Some(e) if e.key == key => e.clone(),
                _ => {
                    let e = Arc::new(HashEntry {
                        key,
                        value: Mutex::new(None),
                    });
                    map.insert(path.to_path_buf(), e.clone());
                    e
                }
            }
        };
        // Holding the entry's lock while hashing makes other requests for it wait.
        let mut value = entry.value.lock().unwrap();
        if let Some(v) = value.as_ref() {
            return Ok(v.clone());
        }
        let h = sha256_file(path)?;
        *value = Some(h.clone());
        Ok(h)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Satisfiable(0, 9));
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeSpec::Satisfiable(90, 99)
        );
        assert_eq!(
            parse_range("bytes=90-200", 100),
            RangeSpec::Satisfiable(90, 99)
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeSpec::Satisfiable(90, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
    }
}
