//! Measures `QuantizeStream` (src/quantize_stream.rs) on a checkpoint folder, as the browser runs
//! it: the safetensors file fed in download-sized chunks, the GGUF bytes written as they come.
//!
//!     cargo run --release --features native --example stream_quantize -- DIR OUT.gguf [q8_0|q4k|f16] [CHUNK_BYTES] [NAME]
//!
//! NAME is recorded as general.name (default DIR, as `gitcap quantize --model DIR` records it), so
//! the output can be compared byte for byte with the CLI's. Prints source MB/s and the largest
//! state blob seen; measure peak memory with /usr/bin/time -v.

use std::io::{Read, Write};
use std::time::Instant;

use gitcap::checkpoint::read_model_files;
use gitcap::quantize_stream::QuantizeStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out, rest @ ..] = args.as_slice() else {
        return Err("usage: stream_quantize DIR OUT.gguf [TYPE] [CHUNK_BYTES] [NAME]".into());
    };
    let quant_type = rest.first().map_or("q8_0", |s| s.as_str()).parse()?;
    let chunk: usize = rest.get(1).map_or(Ok(4 << 20), |s| s.parse())?;
    let name = rest.get(2).unwrap_or(dir);
    let dir = std::path::Path::new(dir);
    let mut stream = QuantizeStream::new(read_model_files(dir)?, quant_type, name)?;
    let mut src = std::fs::File::open(dir.join("model.safetensors"))?;
    let mut dst = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut buf = vec![0u8; chunk];
    let mut outbuf = Vec::new();
    let mut max_state = 0;
    let started = Instant::now();
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        outbuf.clear();
        stream.push_into(&buf[..n], &mut outbuf)?;
        dst.write_all(&outbuf)?;
        max_state = max_state.max(stream.state()?.len());
    }
    let received = stream.received();
    let summary = stream.finish()?;
    dst.flush()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} MB of source -> {} MB of {} in {secs:.2} s: {:.0} MB/s of source; chunks of {chunk} bytes; largest state {max_state} bytes",
        received as f64 / 1e6,
        summary.file_bytes as f64 / 1e6,
        summary.quant_type,
        received as f64 / 1e6 / secs
    );
    Ok(())
}
