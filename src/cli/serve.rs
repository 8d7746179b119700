//! `gitcap serve`: a small static file server for the in-browser captioner (`www/`) on 127.0.0.1.
//!
//! Std only: `TcpListener`, one thread per connection, HTTP/1.1 keep-alive. It sends the MIME
//! types browsers insist on (`application/wasm` for streaming compilation, `text/javascript` for
//! module workers), answers `Range` requests with 206 (the page resumes interrupted model
//! downloads chunk by chunk), and adds the cross-origin isolation headers that multithreaded
//! WebAssembly (SharedArrayBuffer) needs. Model folders given with `--model-dir` are mounted at
//! `/models/<folder name>/`; like the Hugging Face hub, every file's `ETag` is its SHA-256, which
//! the page checks downloads against.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 64;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request heads larger than this are refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// Folder to serve (the web page).
    #[arg(default_value = "www")]
    dir: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A local checkpoint folder (or .gguf file) to serve at /models/<name>/; repeatable.
    #[arg(long = "model-dir", value_name = "PATH")]
    model_dirs: Vec<PathBuf>,
    /// Serve without the cross-origin isolation headers (COOP/COEP/CORP).
    #[arg(long)]
    no_isolation: bool,
    /// Log each request to stderr.
    #[arg(long, short)]
    verbose: bool,
}

struct Mount {
    /// URL prefix without trailing slash ("" for the page itself, "/models/tiny-coco").
    prefix: String,
    root: PathBuf,
    /// A single file mounted as `prefix` itself (a .gguf model).
    single_file: bool,
}

struct Server {
    mounts: Vec<Mount>,
    isolation: bool,
    verbose: bool,
    hashes: HashCache,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let root = args.dir.canonicalize().with_context(|| {
        format!(
            "cannot serve {}: no such folder (run from the repository root, or pass the folder)",
            args.dir.display()
        )
    })?;
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    if !root.join("pkg").join("gitcap.js").is_file() && root.join("index.html").is_file() {
        eprintln!(
            "warning: {} has no pkg/gitcap.js; build the WebAssembly module first (bash build.sh)",
            root.display()
        );
    }
    if !args.no_isolation
        && root.join("pkg").join("gitcap.js").is_file()
        && !root.join("pkg-threads").join("gitcap.js").is_file()
    {
        eprintln!(
            "note: {} has no pkg-threads/ (the threaded build, made by build.sh without --no-threads); \
             the page will run on one thread",
            root.display()
        );
    }
    let mut mounts = Vec::new();
    let mut model_urls = Vec::new();
    for dir in &args.model_dirs {
        let path = dir
            .canonicalize()
            .with_context(|| format!("--model-dir {}: no such folder or file", dir.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("--model-dir needs a named folder")?
            .to_string();
        if name.contains(|c: char| c == '/' || c == '\\' || c.is_control()) {
            bail!("--model-dir {}: unusable name", dir.display());
        }
        let single_file = path.is_file();
        let prefix = format!("/models/{}", percent_encode(&name));
        if mounts.iter().any(|m: &Mount| m.prefix == prefix) {
            bail!("two --model-dir paths are both named {name}");
        }
        model_urls.push(if single_file {
            prefix.clone()
        } else {
            format!("{prefix}/")
        });
        mounts.push(Mount {
            prefix,
            root: path,
            single_file,
        });
    }
    // Longest prefix first; the page root last.
    mounts.push(Mount {
        prefix: String::new(),
        root,
        single_file: false,
    });
    let server = Arc::new(Server {
        mounts,
        isolation: !args.no_isolation,
        verbose: args.verbose,
        hashes: HashCache::default(),
    });
    // Hash the model files ahead of their first request (their ETag is the SHA-256).
    for m in server.mounts.iter().filter(|m| !m.prefix.is_empty()) {
        let server = server.clone();
        let root = m.root.clone();
        std::thread::spawn(move || prehash(&server, &root));
    }

    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}/");
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "gitcap serve: {} on {base}",
            server.mounts.last().unwrap().root.display()
        )?;
        for url in &model_urls {
            writeln!(out, "model: {base}?model={url}")?;
        }
        if !server.isolation {
            writeln!(
                out,
                "(without cross-origin isolation: WebAssembly threads are unavailable)"
            )?;
        }
        out.flush()?;
    }

    let active = Arc::new((Mutex::new(0usize), Condvar::new()));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        {
            let (lock, cvar) = &*active;
            let mut n = lock.lock().unwrap();
            while *n >= MAX_CONNECTIONS {
                n = cvar.wait(n).unwrap();
            }
            *n += 1;
        }
        let server = server.clone();
        let active = active.clone();
        std::thread::spawn(move || {
            let _ = server.connection(stream);
            let (lock, cvar) = &*active;
            *lock.lock().unwrap() -= 1;
            cvar.notify_one();
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn prehash(server: &Server, root: &Path) {
    if root.is_file() {
        let _ = server.hashes.sha256(root);
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() {
            let _ = server.hashes.sha256(&p);
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one line of a request head into `line`, adding its length to `total`; a line can never
/// take the head past MAX_HEAD_BYTES unnoticed. Returns the bytes read (0 at end of stream).
fn read_head_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    total: &mut usize,
) -> std::io::Result<usize> {
    line.clear();
    let n = reader
        .by_ref()
        .take(MAX_HEAD_BYTES as u64)
        .read_line(line)?;
    *total += n;
    Ok(n)
}

/// Reads one request head; `Ok(None)` when the client closed the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    let mut total = 0;
    // Skip blank lines between requests (RFC 9112 §2.2).
    loop {
        if read_head_line(reader, &mut line, &mut total)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
        if total > MAX_HEAD_BYTES {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(std::io::Error::other("malformed request line"));
    };
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());
    let mut headers = Vec::new();
    loop {
        let n = read_head_line(reader, &mut line, &mut total)?;
        if n == 0 || total > MAX_HEAD_BYTES {
            return Err(std::io::Error::other("request head too large or cut short"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let connection = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    Ok(Some(Request {
        method,
        target,
        headers,
        keep_alive,
    }))
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    File { file: File, start: u64, len: u64 },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    }
}

fn text_response(status: u16, msg: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
        body: Body::Bytes(format!("{msg}\n").into_bytes()),
    }
}

impl Server {
    fn connection(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        loop {
            let req = match read_request(&mut reader) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Ok(())
                }
                Err(_) => {
                    let resp = text_response(400, "bad request");
                    let _ = self.send(&mut writer, "GET", resp, false);
                    return Ok(());
                }
            };
            // Request bodies are not expected; a client that sends one gets its connection closed.
            let has_body = req
                .header("content-length")
                .is_some_and(|v| v.trim() != "0")
                || req.header("transfer-encoding").is_some();
            let keep_alive = req.keep_alive && !has_body;
            let resp = self.handle(&req);
            if self.verbose {
                eprintln!(
                    "{} {} {}{}",
                    req.method,
                    req.target,
                    resp.status,
                    req.header("range")
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
            self.send(&mut writer, &req.method, resp, keep_alive)?;
            if !keep_alive {
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }

    fn send(
        &self,
        w: &mut TcpStream,
        method: &str,
        resp: Response,
        keep_alive: bool,
    ) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if resp.status != 304 {
            head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        if self.isolation {
            head.push_str("Cross-Origin-Opener-Policy: same-origin\r\n");
            head.push_str("Cross-Origin-Embedder-Policy: require-corp\r\n");
        }
        if !resp
            .headers
            .iter()
            .any(|(k, _)| *k == "Cross-Origin-Resource-Policy")
        {
            head.push_str("Cross-Origin-Resource-Policy: same-origin\r\n");
        }
        head.push_str("X-Content-Type-Options: nosniff\r\n");
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        w.write_all(head.as_bytes())?;
        if method == "HEAD" {
            return w.flush();
        }
        match resp.body {
            Body::Empty => {}
            Body::Bytes(b) => w.write_all(&b)?,
            Body::File {
                mut file,
                start,
                len,
            } => {
                file.seek(SeekFrom::Start(start))?;
                let copied = std::io::copy(&mut file.take(len), w)?;
                if copied != len {
                    // The file shrank under us: the client sees a short body, never a padded one.
                    return Err(std::io::Error::other("file changed while sending"));
                }
            }
        }
        w.flush()
    }

    fn handle(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = text_response(405, "only GET and HEAD");
            r.headers.push(("Allow", "GET, HEAD".into()));
            return r;
        }
        let path = req.target.split(['?', '#']).next().unwrap_or("/");
        let Some(decoded) = percent_decode(path) else {
            return text_response(400, "bad path encoding");
        };
        if !decoded.starts_with('/') {
            return text_response(400, "bad request target");
        }
        let Some((mount, rel)) = self.resolve_mount(&decoded) else {
            return text_response(404, "not found");
        };
        let Some(rel) = safe_relative(rel) else {
            return text_response(403, "forbidden path");
        };
        let mut fs_path = if mount.single_file {
            if !rel.as_os_str().is_empty() {
                return text_response(404, "not found");
            }
            mount.root.clone()
        } else {
            mount.root.join(&rel)
        };
        // Symlinks must not lead out of the served folder.
        let Ok(canonical) = fs_path.canonicalize() else {
            return text_response(404, "not found");
        };
        if !canonical.starts_with(&mount.root) {
            return text_response(403, "forbidden path");
        }
        fs_path = canonical;
        if fs_path.is_dir() {
            if !decoded.ends_with('/') {
                let mut r = text_response(301, "moved");
                r.headers.push(("Location", format!("{path}/")));
                return r;
            }
            fs_path = fs_path.join("index.html");
        }
        let is_model = !mount.prefix.is_empty();
        self.serve_file(req, &fs_path, is_model)
    }

    fn resolve_mount<'a>(&'a self, path: &'a str) -> Option<(&'a Mount, &'a str)> {
        for m in &self.mounts {
            if m.prefix.is_empty() {
                return Some((m, path.trim_start_matches('/')));
            }
            let decoded_prefix = percent_decode(&m.prefix).unwrap_or_default();
            if let Some(rest) = path.strip_prefix(decoded_prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Some((m, rest.trim_start_matches('/')));
                }
            }
        }
        None
    }

    fn serve_file(&self, req: &Request, path: &Path, is_model: bool) -> Response {
        let Ok(file) = File::open(path) else {
            return text_response(404, "not found");
        };
        let Ok(meta) = file.metadata() else {
            return text_response(500, "cannot read file");
        };
        if !meta.is_file() {
            return text_response(404, "not found");
        }
        let size = meta.len();
        let mut headers: Vec<(&'static str, String)> = vec![
            ("Content-Type", mime_type(path).into()),
            ("Accept-Ranges", "bytes".into()),
            ("Cache-Control", "no-cache".into()),
        ];
        if let Some(modified) = meta.modified().ok().and_then(http_date) {
            headers.push(("Last-Modified", modified));
        }
        let etag = match self.hashes.sha256(path) {
            Ok(h) => Some(format!("\"{h}\"")),
            Err(_) => None,
        };
        if let Some(e) = &etag {
            headers.push(("ETag", e.clone()));
        }
        if is_model {
            // A local mirror of hub files: readable by a page of another origin too.
            headers.push(("Cross-Origin-Resource-Policy", "cross-origin".into()));
            headers.push(("Access-Control-Allow-Origin", "*".into()));
            headers.push((
                "Access-Control-Expose-Headers",
                "ETag, Content-Range, Content-Length, Accept-Ranges".into(),
            ));
        }
        if let (Some(inm), Some(e)) = (req.header("if-none-match"), &etag) {
            if inm.split(',').any(|t| t.trim() == e || t.trim() == "*") {
                return Response {
                    status: 304,
                    headers,
                    body: Body::Empty,
                };
            }
        }
        // If-Range: serve the range only if the client's copy is this exact file.
        let range_applies = match req.header("if-range") {
            Some(v) => etag.as_deref() == Some(v.trim()),
            None => true,
        };
        if let (Some(range), true) = (req.header("range"), range_applies) {
            match parse_range(range, size) {
                RangeSpec::Satisfiable(start, end) => {
                    headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
                    return Response {
                        status: 206,
                        headers,
                        body: Body::File {
                            file,
                            start,
                            len: end - start + 1,
                        },
                    };
                }
                RangeSpec::Unsatisfiable => {
                    headers.push(("Content-Range", format!("bytes */{size}")));
                    return Response {
                        status: 416,
                        headers,
                        body: Body::Empty,
                    };
                }
                RangeSpec::Ignore => {}
            }
        }
        Response {
            status: 200,
            headers,
            body: Body::File {
                file,
                start: 0,
                len: size,
            },
        }
    }
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Inclusive byte positions.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Malformed, multiple ranges, or another unit: answer with the whole file.
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

/// The path below a mount as plain components; `None` for anything that could climb out
/// (`..`), absolute parts, backslashes, NUL or drive prefixes.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for seg in rel.split('/') {
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." || seg.contains('\\') || seg.contains('\0') || seg.contains(':') {
            return None;
        }
        let p = Path::new(seg);
        match p.components().next() {
            Some(Component::Normal(_)) if p.components().count() == 1 => out.push(seg),
            _ => return None,
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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
        "safetensors" | "gguf" | "bin" => "application/octet-stream",
        _ => "application/octet-stream",
    }
}

/// An RFC 9110 IMF-fixdate.
fn http_date(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    Some(format!(
        "{weekday}, {d:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT"
    ))
}

/// SHA-256 of served files, computed once per (path, size, modification time). Concurrent
/// requests for a file being hashed wait for the one computation.
#[derive(Default)]
struct HashCache {
    entries: Mutex<HashMap<PathBuf, Arc<HashEntry>>>,
}

struct HashEntry {
    key: (u64, Option<SystemTime>),
    value: Mutex<Option<String>>,
}

impl HashCache {
    fn sha256(&self, path: &Path) -> std::io::Result<String> {
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
    Ok(h.hex())
}

/// FIPS 180-4 SHA-256.
struct Sha256 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    total: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Self {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: [0; 64],
            buf_len: 0,
            total: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len == 64 {
                let block = self.buf;
                self.compress(&block);
                self.buf_len = 0;
            }
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            self.compress(block.try_into().unwrap());
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len += rest.len();
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(c.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    fn hex(mut self) -> String {
        let bits = self.total.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let len_after = (self.total + 1) % 64;
        let zeros = if len_after <= 56 {
            56 - len_after
        } else {
            120 - len_after
        };
        pad.extend(std::iter::repeat_n(0u8, zeros as usize));
        pad.extend_from_slice(&bits.to_be_bytes());
        let total = self.total;
        self.update(&pad);
        self.total = total;
        debug_assert_eq!(self.buf_len, 0);
        self.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        h.hex()
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Fed in uneven pieces.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut h = Sha256::new();
        for c in data.chunks(37) {
            h.update(c);
        }
        assert_eq!(h.hex(), sha(&data));
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            sha(&million_a),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

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

    #[test]
    fn traversal_is_refused() {
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("a\\..\\b").is_none());
        assert!(safe_relative("C:/x").is_none());
        assert_eq!(safe_relative("a/./b//c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(safe_relative("").unwrap(), PathBuf::new());
    }

    #[test]
    fn dates_and_encoding() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t).unwrap(), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(percent_decode("/a%20b/%2e%2e").unwrap(), "/a b/..");
        assert!(percent_decode("/%zz").is_none());
        assert_eq!(percent_encode("tiny coco"), "tiny%20coco");
    }
}
