//! `gitcap serve`: the in-browser captioner (`www/`) and local model folders on 127.0.0.1.
//!
//! HTTP is tiny_http's (a blocking server that fits this blocking CLI); this module decides what
//! each request gets. Model folders given with `--model-dir` are mounted at `/models/<name>/`.
//! Every response carries the page's Content-Security-Policy and, unless `--no-isolation`, the
//! cross-origin isolation headers that multithreaded WebAssembly (SharedArrayBuffer) needs.

mod files;
mod paths;
mod policy;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use files::{Conditions, HashCache};
use paths::{Lookup, Mount};
use policy::Policy;

/// Requests answered at once (a model download holds one for its whole range).
const WORKERS: usize = 32;

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
    /// Serve without the cross-origin isolation headers (COOP/COEP).
    #[arg(long)]
    no_isolation: bool,
    /// Also answer requests for this host name (e.g. behind a proxy or tunnel); NAME or
    /// NAME:PORT; repeatable. Only 127.0.0.1, localhost and [::1] with the port are served otherwise.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// Let pages of this origin (https://host[:port]) read /models/ with CORS; repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Let the page download models from this origin too (added to its Content-Security-Policy
    /// connect-src beside the Hugging Face hub); repeatable.
    #[arg(long = "connect-src", value_name = "ORIGIN")]
    connect_src: Vec<String>,
    /// Log each request to stderr.
    #[arg(long, short)]
    verbose: bool,
}

struct Server {
    mounts: Vec<Mount>,
    policy: Policy,
    isolation: bool,
    verbose: bool,
    hashes: HashCache,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let root = page_folder(&args.dir, args.no_isolation)?;
    let mut mounts = model_mounts(&args.model_dirs)?;
    mounts.push(Mount {
        prefix: Vec::new(),
        root,
        single_file: false,
    });
    let http = tiny_http::Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let port = http
        .server_addr()
        .to_ip()
        .context("not listening on an IP address")?
        .port();
    let server = Arc::new(Server {
        policy: Policy::new(
            port,
            &args.allow_hosts,
            &args.cors_origins,
            &args.connect_src,
        )?,
        mounts,
        isolation: !args.no_isolation,
        verbose: args.verbose,
        hashes: HashCache::default(),
    });
    // Hash the model files ahead of their first request (their ETag is the SHA-256).
    for m in server.mounts.iter().filter(|m| m.is_model()) {
        let server = server.clone();
        let root = m.root.clone();
        std::thread::spawn(move || prehash(&server.hashes, &root));
    }
    server.announce(port)?;

    let http = Arc::new(http);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (http, server) = (http.clone(), server.clone());
            std::thread::spawn(move || {
                while let Ok(request) = http.recv() {
                    server.answer(request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(ExitCode::SUCCESS)
}

fn page_folder(dir: &Path, no_isolation: bool) -> Result<PathBuf> {
    let root = dir.canonicalize().with_context(|| {
        format!(
            "cannot serve {}: no such folder (run from the repository root, or pass the folder)",
            dir.display()
        )
    })?;
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let has_pkg = root.join("pkg").join("gitcap.js").is_file();
    if !has_pkg && root.join("index.html").is_file() {
        eprintln!(
            "warning: {} has no pkg/gitcap.js; build the WebAssembly module first (bash build.sh)",
            root.display()
        );
    }
    if !no_isolation && has_pkg && !root.join("pkg-threads").join("gitcap.js").is_file() {
        eprintln!(
            "note: {} has no pkg-threads/ (the threaded build, made by build.sh without --no-threads); \
             the page will run on one thread",
            root.display()
        );
    }
    Ok(root)
}

fn model_mounts(dirs: &[PathBuf]) -> Result<Vec<Mount>> {
    let mut mounts: Vec<Mount> = Vec::new();
    for dir in dirs {
        let path = dir
            .canonicalize()
            .with_context(|| format!("--model-dir {}: no such folder or file", dir.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("--model-dir needs a named folder")?
            .to_string();
        if name.starts_with('.') || name.contains(|c: char| c == '\\' || c.is_control()) {
            bail!("--model-dir {}: unusable name", dir.display());
        }
        let prefix = vec!["models".to_string(), name.clone()];
        if mounts.iter().any(|m| m.prefix == prefix) {
            bail!("two --model-dir paths are both named {name}");
        }
        mounts.push(Mount {
            prefix,
            single_file: path.is_file(),
            root: path,
        });
    }
    Ok(mounts)
}

fn prehash(hashes: &HashCache, root: &Path) {
    if root.is_file() {
        let _ = hashes.sha256(root);
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() && !e.file_name().to_string_lossy().starts_with('.') {
            let _ = hashes.sha256(&p);
        }
    }
}

/// Characters left as they are in a mount's URL.
const URL_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A response before it is handed to tiny_http.
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

pub enum Body {
    /// No body; `len` is the Content-Length announced (a 304's is the whole file's).
    None {
        len: u64,
    },
    Bytes(Vec<u8>),
    File {
        file: File,
        start: u64,
        len: u64,
    },
}

impl Reply {
    fn new(status: u16, body: Body) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn text(status: u16, msg: &str) -> Self {
        let mut r = Self::new(status, Body::Bytes(format!("{msg}\n").into_bytes()));
        r.header("Content-Type", "text/plain; charset=utf-8");
        r
    }

    fn header(&mut self, name: &'static str, value: &str) {
        self.headers.push((name, value.to_string()));
    }
}

impl Server {
    /// Prints the page's and the models' URLs in one write: a script that reads the output
    /// (the e2e tests' helper) sees every line once it sees the first, not the URL alone in one
    /// chunk of the pipe and the model lines in a later one.
    fn announce(&self, port: u16) -> Result<()> {
        use std::fmt::Write as _;
        let base = format!("http://127.0.0.1:{port}/");
        let mut out = String::new();
        let page = self.mounts.last().expect("the page's mount");
        writeln!(out, "gitcap serve: {} on {base}", page.root.display())?;
        for m in self.mounts.iter().filter(|m| m.is_model()) {
            let url: Vec<String> = m
                .prefix
                .iter()
                .map(|s| utf8_percent_encode(s, URL_SAFE).to_string())
                .collect();
            let slash = if m.single_file { "" } else { "/" };
            writeln!(out, "model: {base}?model=/{}{slash}", url.join("/"))?;
        }
        if !self.isolation {
            writeln!(
                out,
                "(without cross-origin isolation: WebAssembly threads are unavailable)"
            )?;
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    fn answer(&self, request: Request) {
        let header = |name: &str| -> Option<String> {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
        };
        let (host, origin, range) = (header("Host"), header("Origin"), header("Range"));
        let (if_range, if_none_match) = (header("If-Range"), header("If-None-Match"));
        let conditions = Conditions {
            range: range.as_deref(),
            if_range: if_range.as_deref(),
            if_none_match: if_none_match.as_deref(),
        };
        let (mut reply, is_model) = if self.policy.host_allowed(host.as_deref()) {
            self.route(request.method(), request.url(), &conditions)
        } else {
            (
                Reply::text(421, &self.policy.host_refusal(host.as_deref())),
                false,
            )
        };
        if is_model {
            self.cors(&mut reply, request.method(), origin.as_deref());
        }
        if self.verbose {
            eprintln!(
                "{} {} {}{}",
                request.method(),
                request.url(),
                reply.status,
                range.map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
        // tiny_http leaves out the body of a HEAD response itself, keeping its Content-Length.
        let _ = request.respond(self.finish(reply));
    }

    /// The reply for a request whose `Host` is accepted, and whether it is under `/models/`.
    fn route(&self, method: &Method, target: &str, cond: &Conditions) -> (Reply, bool) {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let lookup = paths::lookup(&self.mounts, path);
        let is_model = match &lookup {
            Lookup::File(i, _) => self.mounts[*i].is_model(),
            _ => path.starts_with("/models/"),
        };
        match method {
            Method::Get | Method::Head => {}
            Method::Options if is_model => return (Reply::new(204, Body::None { len: 0 }), true),
            _ => {
                let mut r = Reply::text(405, "only GET and HEAD");
                r.header("Allow", "GET, HEAD");
                return (r, is_model);
            }
        }
        let reply = match lookup {
            Lookup::File(_, file) => files::serve(&file, cond, &self.hashes),
            Lookup::AddSlash => {
                let mut r = Reply::text(301, "moved");
                r.header("Location", &format!("{path}/"));
                r
            }
            Lookup::NotFound => Reply::text(404, "not found"),
            Lookup::Refused(why) => Reply::text(403, why),
        };
        (reply, is_model)
    }

    /// CORS for `/models/`: only for the origins the policy allows, so that other sites cannot
    /// read local checkpoints.
    fn cors(&self, reply: &mut Reply, method: &Method, origin: Option<&str>) {
        reply.header("Vary", "Origin");
        let Some(origin) = origin.filter(|o| self.policy.cors_allows(o)) else {
            if *method == Method::Options {
                *reply = Reply::text(403, "this origin may not read /models/ (see --cors-origin)");
                reply.header("Vary", "Origin");
            }
            return;
        };
        reply.header("Access-Control-Allow-Origin", origin);
        reply.header(
            "Access-Control-Expose-Headers",
            "ETag, Content-Range, Content-Length, Accept-Ranges",
        );
        if *method == Method::Options {
            reply.header("Access-Control-Allow-Methods", "GET, HEAD");
            reply.header(
                "Access-Control-Allow-Headers",
                "Range, If-None-Match, If-Range",
            );
            reply.header("Access-Control-Max-Age", "600");
        }
    }

    /// The reply with the headers every response carries, as tiny_http sends it.
    fn finish(&self, mut reply: Reply) -> Response<Box<dyn Read + Send>> {
        if self.isolation {
            reply.header("Cross-Origin-Opener-Policy", "same-origin");
            reply.header("Cross-Origin-Embedder-Policy", "require-corp");
        }
        reply.header("Cross-Origin-Resource-Policy", "same-origin");
        reply.header(
            "Content-Security-Policy",
            self.policy.content_security_policy(),
        );
        reply.header("X-Content-Type-Options", "nosniff");
        reply.header("Referrer-Policy", "no-referrer");
        reply.header("Server", "gitcap");
        let headers = reply
            .headers
            .iter()
            .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
            .collect();
        let (reader, len): (Box<dyn Read + Send>, u64) = match reply.body {
            Body::None { len } => (Box::new(std::io::empty()), len),
            Body::Bytes(b) => {
                let len = b.len() as u64;
                (Box::new(std::io::Cursor::new(b)), len)
            }
            Body::File {
                mut file,
                start,
                len,
            } => match file.seek(SeekFrom::Start(start)) {
                Ok(_) => (Box::new(ExactLen::new(file.take(len), len)), len),
                Err(_) => (Box::new(std::io::empty()), 0),
            },
        };
        // A known length is always sent as Content-Length, never chunked.
        Response::new(
            StatusCode(reply.status),
            headers,
            reader,
            Some(len as usize),
            None,
        )
        .with_chunked_threshold(usize::MAX)
    }
}

/// A body that fails instead of ending early when the file shrinks while it is sent, so the
/// client sees a cut connection rather than a short body it might take as whole.
struct ExactLen<R> {
    inner: R,
    left: u64,
}

impl<R> ExactLen<R> {
    fn new(inner: R, len: u64) -> Self {
        Self { inner, left: len }
    }
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::other("the file changed while it was sent"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
