//! Decodes images with gitcap's decoder and writes their RGB pixels, for differential checks
//! against Pillow (`fuzz/pillow_diff.py`):
//!
//!     cargo run --release --features native --example decode_dump -- OUT_DIR FILE...
//!
//! For each FILE, one JSON line on stdout: {"file", "width", "height"} and OUT_DIR/<index>.rgb
//! (width × height × 3 bytes, rows top to bottom), or {"file", "error"}.

use std::io::Write;

use gitcap::image::{decode_image, ImageLimits};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out_dir) = args.next() else {
        eprintln!("usage: decode_dump OUT_DIR FILE...");
        std::process::exit(2);
    };
    let out_dir = std::path::PathBuf::from(out_dir);
    std::fs::create_dir_all(&out_dir).expect("OUT_DIR can be created");
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    for (i, file) in args.enumerate() {
        let line = match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| decode_image(&b, &ImageLimits::default()).map_err(|e| e.to_string()))
        {
            Ok(img) => {
                std::fs::write(out_dir.join(format!("{i}.rgb")), img.as_raw())
                    .expect("OUT_DIR is writable");
                serde_json::json!({ "file": file, "width": img.width(), "height": img.height() })
            }
            Err(e) => serde_json::json!({ "file": file, "error": e }),
        };
        writeln!(stdout, "{line}").expect("stdout");
    }
}
