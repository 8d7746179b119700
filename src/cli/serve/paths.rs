//! From a request path to a file inside one of the served folders.
//!
//! Nothing outside a folder is ever reached: every segment is decoded on its own and refused when
//! it could climb (`..`), hide a separator (`%2F`, `\`) or name a dotfile, and every path that is
//! built (the file, and a folder's `index.html` after it is joined) is canonicalized and must lie
//! under the canonical folder, so a symlink cannot lead out either.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// A folder (or single file) served under a URL prefix.
pub struct Mount {
    /// The prefix's decoded segments: none for the page itself, `["models", name]` for a model.
    pub prefix: Vec<String>,
    /// Canonical.
    pub root: PathBuf,
    /// A single file mounted as the prefix itself (a .gguf model).
    pub single_file: bool,
}

impl Mount {
    pub fn is_model(&self) -> bool {
        !self.prefix.is_empty()
    }
}

/// What a request path leads to.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The mount (an index into the list) and the canonical file.
    File(usize, PathBuf),
    /// A folder asked for without its trailing slash.
    AddSlash,
    NotFound,
    /// A path that is never served, with the reason.
    Refused(&'static str),
}

/// The decoded, non-empty segments of an absolute request path.
pub fn segments(path: &str) -> Result<Vec<String>, &'static str> {
    if !path.starts_with('/') {
        return Err("the request target must be an absolute path");
    }
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| "the path is not UTF-8")?;
        if seg.starts_with('.') {
            return Err("paths with a segment starting with '.' (dotfiles, ..) are not served");
        }
        if seg.contains(['/', '\\', '\0', ':']) {
            return Err("the path has an encoded separator or a forbidden character");
        }
        out.push(seg.into_owned());
    }
    Ok(out)
}

/// Finds the file that `path` (the request target without its query) names.
pub fn lookup(mounts: &[Mount], path: &str) -> Lookup {
    let segs = match segments(path) {
        Ok(s) => s,
        Err(why) => return Lookup::Refused(why),
    };
    // Model mounts first: the page's own folder takes everything else.
    let Some((index, mount)) = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| segs.starts_with(&m.prefix))
        .max_by_key(|(_, m)| m.prefix.len())
    else {
        return Lookup::NotFound;
    };
    let rest = &segs[mount.prefix.len()..];
    if mount.single_file {
        return if rest.is_empty() {
            Lookup::File(index, mount.root.clone())
        } else {
            Lookup::NotFound
        };
    }
    let joined = rest.iter().fold(mount.root.clone(), |p, s| p.join(s));
    let found = match contained(&mount.root, &joined) {
        Ok(p) => p,
        Err(l) => return l,
    };
    if found.is_dir() {
        if !path.ends_with('/') {
            return Lookup::AddSlash;
        }
        return match contained(&mount.root, &found.join("index.html")) {
            Ok(index_file) if index_file.is_file() => Lookup::File(index, index_file),
            Ok(_) => Lookup::NotFound,
            Err(l) => l,
        };
    }
    if found.is_file() {
        Lookup::File(index, found)
    } else {
        Lookup::NotFound
    }
}

/// `path` canonicalized, when it exists and lies under `root` (canonical) without passing through
/// a dot-named entry.
fn contained(root: &Path, path: &Path) -> Result<PathBuf, Lookup> {
    let canonical = path.canonicalize().map_err(|_| Lookup::NotFound)?;
    let Ok(below) = canonical.strip_prefix(root) else {
        return Err(Lookup::Refused("the path leads outside the served folder"));
    };
    if below
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    {
        return Err(Lookup::Refused("the path leads to a dotfile"));
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_refuse_climbing_and_hidden_separators() {
        assert_eq!(segments("/a//b/c%20d").unwrap(), ["a", "b", "c d"]);
        assert!(segments("/").unwrap().is_empty());
        for bad in [
            "/../x",
            "/a/%2e%2e/x",
            "/a/%2E%2e/x",
            "/..%2fx",
            "/a%2Fb",
            "/a\\..\\b",
            "/C:/x",
            "/.git/config",
            "/a/.env",
            "/a/%2eenv",
            "/%00",
            "/%ff",
            "x",
            "http://evil.example/x",
        ] {
            assert!(segments(bad).is_err(), "{bad}");
        }
    }
}
