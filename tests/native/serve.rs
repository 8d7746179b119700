//! `gitcap serve` over raw HTTP: the real binary on 127.0.0.1 with a free port, and requests
//! written byte for byte (so that `..`, odd `Host`s and encodings reach it as sent).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::TempDir;

/// What no response may ever contain: the content of a file outside the served folders.
const SECRET: &str = "outside-secret-5f1c";
const DOTFILE: &str = "dotfile-secret-93ab";
const PAGE: &str = "<p>the page</p>";

/// A served site, a model folder and a file outside both, with the symlinks that once leaked it.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new("serve");
        let root = &dir.0;
        let write = |p: &str, bytes: &[u8]| {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        write("outside/secret.txt", SECRET.as_bytes());
        write("site/index.html", PAGE.as_bytes());
        write("site/app.js", b"export const x = 1;\n");
        write("site/m.wasm", b"\0asm\x01\0\0\0");
        write("site/abc.txt", b"abc");
        write("site/.env", DOTFILE.as_bytes());
        write("site/.hidden/x.txt", DOTFILE.as_bytes());
        write("site/plain/index.html", PAGE.as_bytes());
        std::fs::create_dir_all(root.join("site/sub")).unwrap();
        let secret = root.join("outside/secret.txt");
        symlink(&secret, root.join("site/sub/index.html")).unwrap();
        symlink(&secret, root.join("site/leak.txt")).unwrap();
        symlink(root.join("outside"), root.join("site/outdir")).unwrap();
        symlink(root.join("site/.env"), root.join("site/env.txt")).unwrap();
        symlink(root.join("site/app.js"), root.join("site/alias.js")).unwrap();
        let weights: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        write("models/tiny/weights.bin", &weights);
        write("models/tiny/config.json", b"{}");
        write("models/tiny/.secret", DOTFILE.as_bytes());
        symlink(&secret, root.join("models/tiny/leak.json")).unwrap();
        Self { dir }
    }

    fn path(&self, p: &str) -> String {
        self.dir.0.join(p).to_str().unwrap().to_string()
    }

    fn weights(&self) -> Vec<u8> {
        std::fs::read(self.dir.0.join("models/tiny/weights.bin")).unwrap()
    }

    /// `gitcap serve site --model-dir models/tiny --port 0 EXTRA...`.
    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve".to_string(),
            self.path("site"),
            "--port".into(),
            "0".into(),
            "--model-dir".into(),
            self.path("models/tiny"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(&args)
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gitcap"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        Self { child, port }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `method path` with `Host: 127.0.0.1:PORT` unless `headers` name another.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.host()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        self.raw(head.as_bytes())
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[])
    }

    fn raw(&self, bytes: &[u8]) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(bytes).unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        Reply::parse(&data)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(data: &[u8]) -> Self {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(data)));
        let head = std::str::from_utf8(&data[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Self {
            status,
            headers,
            body: data[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Refused (400 for a target tiny_http cannot take, 403) or not found (404), without a byte
    /// of what is behind it.
    fn assert_withheld(&self, what: &str) {
        assert!(
            matches!(self.status, 400 | 403 | 404),
            "{what}: {} {}",
            self.status,
            self.text()
        );
        assert!(
            !self.text().contains(SECRET),
            "{what} leaked the outside file"
        );
        assert!(!self.text().contains(DOTFILE), "{what} leaked a dotfile");
    }
}

#[test]
fn symlinks_cannot_lead_outside_the_served_folders() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(page.text(), PAGE);
    assert_eq!(s.get("/plain/").text(), PAGE);
    // A symlink that stays inside is served.
    assert_eq!(s.get("/alias.js").text(), "export const x = 1;\n");

    s.get("/sub/")
        .assert_withheld("/sub/ (index.html -> outside)");
    s.get("/sub/index.html").assert_withheld("/sub/index.html");
    s.get("/leak.txt").assert_withheld("/leak.txt");
    s.get("/outdir/secret.txt")
        .assert_withheld("/outdir/secret.txt");
    s.get("/outdir/").assert_withheld("/outdir/");
    s.get("/models/tiny/leak.json")
        .assert_withheld("/models/tiny/leak.json");
}

#[test]
fn traversal_is_refused_however_it_is_encoded() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    for p in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/sub/..%5c..%5coutside%5csecret.txt",
        "/models/tiny/../../../outside/secret.txt",
        "/models/tiny/%2e%2e/%2e%2e/outside/secret.txt",
        "/models/tiny/..%2f..%2foutside/secret.txt",
        "/./../outside/secret.txt",
    ] {
        s.get(p).assert_withheld(p);
    }
}

#[test]
fn dotfiles_are_refused() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    for p in [
        "/.env",
        "/%2eenv",
        "/.hidden/x.txt",
        "/.hidden/",
        "/env.txt",
        "/models/tiny/.secret",
    ] {
        let r = s.get(p);
        r.assert_withheld(p);
        assert_eq!(r.status, 403, "{p}");
    }
}

#[test]
fn only_the_bound_address_localhost_and_allowed_names_are_served() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    let port = s.port;
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("127.0.0.1:{port}.evil.example"),
    ] {
        let r = s.request("GET", "/", &[("Host", &host)]);
        assert_eq!(r.status, 421, "{host}");
        assert!(r.text().contains("--allow-host"), "{host}: {}", r.text());
        assert!(!r.text().contains(PAGE), "{host} got the page");
    }
    let no_host = s.raw(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(no_host.status, 421);
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = s.request("GET", "/", &[("Host", &host)]);
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.text(), PAGE);
    }

    let named = f.serve(&["--allow-host", "captions.example"]);
    let r = named.request("GET", "/", &[("Host", "captions.example")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), PAGE);
    assert_eq!(
        named
            .request("GET", "/", &[("Host", "evil.example")])
            .status,
        421
    );
}

#[test]
fn models_are_readable_cross_origin_only_by_the_servers_own_and_named_origins() {
    let f = Fixture::new();
    let s = f.serve(&["--cors-origin", "https://app.example"]);
    let own = format!("http://127.0.0.1:{}", s.port);
    let get = |origin: &str| s.request("GET", "/models/tiny/config.json", &[("Origin", origin)]);

    let foreign = get("https://evil.example");
    assert_eq!(foreign.status, 200);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    assert_eq!(foreign.header("vary"), Some("Origin"));
    assert_eq!(
        foreign.header("cross-origin-resource-policy"),
        Some("same-origin")
    );

    for origin in [own.as_str(), "https://app.example"] {
        let r = get(origin);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r
            .header("access-control-expose-headers")
            .unwrap()
            .contains("ETag"));
    }

    // A Range request's preflight.
    let preflight = |origin: &str| {
        s.request(
            "OPTIONS",
            "/models/tiny/weights.bin",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "range"),
            ],
        )
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Range"));
    let refused = preflight("https://evil.example");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);

    // The page's own files never answer CORS.
    let page = s.request("GET", "/app.js", &[("Origin", "https://app.example")]);
    assert_eq!(page.header("access-control-allow-origin"), None);
}

#[test]
fn ranges_etags_and_types() {
    let f = Fixture::new();
    let s = f.serve(&[]);
    let weights = f.weights();
    let url = "/models/tiny/weights.bin";

    let whole = s.get(url);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, weights);
    // Sent with its length, not chunked, so the page can show progress.
    assert_eq!(
        whole.header("content-length"),
        Some(weights.len().to_string().as_str())
    );
    assert_eq!(whole.header("transfer-encoding"), None);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));

    let head = s.request("HEAD", url, &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(weights.len().to_string().as_str())
    );

    let part = s.request("GET", url, &[("Range", "bytes=100-1123")]);
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-1123/{}", weights.len()).as_str())
    );
    assert_eq!(part.body, weights[100..1124]);
    let tail = s.request("GET", url, &[("Range", "bytes=-10")]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, weights[weights.len() - 10..]);
    let past = s.request(
        "GET",
        url,
        &[("Range", &format!("bytes={}-", weights.len()))],
    );
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{}", weights.len()).as_str())
    );

    // The ETag is the SHA-256 (FIPS 180-4's "abc" vector).
    let abc = s.get("/abc.txt");
    let etag = "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"";
    assert_eq!(abc.header("etag"), Some(etag));
    let same = s.request("GET", "/abc.txt", &[("If-None-Match", etag)]);
    assert_eq!(same.status, 304);
    assert!(same.body.is_empty());
    let other = s.request("GET", "/abc.txt", &[("If-None-Match", "\"0000\"")]);
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "abc");
    // If-Range with a stale validator: the whole file; with the current one: the range.
    let stale = s.request(
        "GET",
        "/abc.txt",
        &[("Range", "bytes=0-0"), ("If-Range", "\"0000\"")],
    );
    assert_eq!((stale.status, stale.text().as_str()), (200, "abc"));
    let fresh = s.request(
        "GET",
        "/abc.txt",
        &[("Range", "bytes=1-1"), ("If-Range", etag)],
    );
    assert_eq!((fresh.status, fresh.text().as_str()), (206, "b"));

    for (p, ty) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/m.wasm", "application/wasm"),
        ("/models/tiny/config.json", "application/json"),
    ] {
        let r = s.get(p);
        assert!(
            r.header("content-type").unwrap().starts_with(ty),
            "{p}: {r:?}"
        );
    }
    let post = s.request("POST", "/", &[]);
    assert_eq!(post.status, 405);
    let dir = s.get("/plain");
    assert_eq!(dir.status, 301);
    assert_eq!(dir.header("location"), Some("/plain/"));
}

#[test]
fn isolation_headers_unless_no_isolation() {
    let f = Fixture::new();
    let isolated = f.serve(&[]);
    for p in ["/", "/app.js", "/models/tiny/config.json"] {
        let r = isolated.get(p);
        assert_eq!(
            r.header("cross-origin-opener-policy"),
            Some("same-origin"),
            "{p}"
        );
        assert_eq!(
            r.header("cross-origin-embedder-policy"),
            Some("require-corp"),
            "{p}"
        );
        assert_eq!(
            r.header("cross-origin-resource-policy"),
            Some("same-origin"),
            "{p}"
        );
    }
    let plain = f.serve(&["--no-isolation"]).get("/");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("cross-origin-opener-policy"), None);
    assert_eq!(plain.header("cross-origin-embedder-policy"), None);
}

fn connect_src(r: &Reply) -> Vec<String> {
    let csp = r.header("content-security-policy").expect("a CSP header");
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("connect-src "))
        .expect("a connect-src directive")
        .split(' ')
        .map(String::from)
        .collect()
}

#[test]
fn the_page_and_its_workers_may_connect_only_to_itself_the_hub_and_named_origins() {
    let f = Fixture::new();
    let s = f.serve(&["--connect-src", "https://models.example:8443"]);
    for p in ["/", "/app.js"] {
        let r = s.get(p);
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self' 'wasm-unsafe-eval';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let connect = connect_src(&r);
        for origin in [
            "'self'",
            "https://huggingface.co",
            "https://models.example:8443",
        ] {
            assert!(connect.iter().any(|c| c == origin), "{p}: {connect:?}");
        }
        assert!(!connect
            .iter()
            .any(|c| c == "*" || c == "http:" || c == "https:"));
    }
    let default = f.serve(&[]).get("/");
    assert!(!connect_src(&default)
        .iter()
        .any(|c| c.contains("models.example")));
}

#[test]
fn bad_origins_and_hosts_are_refused_at_start() {
    let f = Fixture::new();
    for (flag, value) in [
        ("--connect-src", "https://x.example; script-src *"),
        ("--connect-src", "models.example"),
        ("--cors-origin", "*"),
        ("--cors-origin", "https://x.example/path"),
        ("--allow-host", "a/b"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gitcap"))
            .args(["serve", &f.path("site"), "--port", "0", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

/// The fixture's own check: the outside file really is there to leak.
#[test]
fn the_fixture_has_something_to_leak() {
    let f = Fixture::new();
    let linked = f.dir.0.join("site/sub/index.html");
    assert_eq!(std::fs::read_to_string(&linked).unwrap(), SECRET);
    assert!(Path::new(&f.path("site/.env")).is_file());
}
