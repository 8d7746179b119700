//! Loading a safetensors file that arrives in pieces (a browser download), without ever holding
//! the whole file in memory.
//!
//! `SafetensorsStream` is fed the file in chunks of any size. It parses the 8-byte header length
//! and the JSON header as soon as they are complete, then decodes each tensor's bytes straight into
//! the f32 buffer of that tensor as they arrive, and turns the buffer into a candle `Tensor` the
//! moment its last byte is in. At any time it holds the tensors built so far, the (partly filled)
//! buffer of the current tensor and at most one incomplete element (< 8 bytes): never the file.
//! git-large is 1.6 GB of f32, and wasm32 has 4 GB of address space in all.
//!
//! F32, F16 and BF16 (and F64) tensors are converted to f32. Integer and boolean tensors (buffers
//! such as `position_ids` that older checkpoints saved) are skipped: GIT reads float weights only,
//! and a tensor the model does need is reported as missing by `Weights`. Any other dtype is an
//! error. The header is checked as the safetensors crate does: offsets must be in order, must not
//! overlap, must leave no holes, and must match each tensor's shape and dtype.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::model::Weights;
use crate::{Error, Result};

/// Largest JSON header accepted (the safetensors crate's own limit is 100 MB too).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// How a tensor's bytes are turned into f32 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F16,
    BF16,
    F64,
    /// A non-float tensor: its bytes are consumed and dropped.
    Skip(usize),
}

impl Elem {
    pub(crate) fn from_dtype(dtype: &str) -> Option<Self> {
        Some(match dtype {
            "F32" => Elem::F32,
            "F16" => Elem::F16,
            "BF16" => Elem::BF16,
            "F64" => Elem::F64,
            "BOOL" | "U8" | "I8" => Elem::Skip(1),
            "U16" | "I16" => Elem::Skip(2),
            "U32" | "I32" => Elem::Skip(4),
            "U64" | "I64" => Elem::Skip(8),
            _ => return None,
        })
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
            Elem::F64 => 8,
            Elem::Skip(n) => n,
        }
    }

    /// Appends the values of `bytes` (a whole number of elements) to `out`.
    pub(crate) fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Elem::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Elem::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Elem::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Elem::F64 => out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            })),
            Elem::Skip(_) => {}
        }
    }
}

/// One tensor of the header, in file order.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) elem: Elem,
    pub(crate) shape: Vec<usize>,
    /// Start and end of its bytes in the data section.
    pub(crate) begin: u64,
    pub(crate) end: u64,
}

/// Where a safetensors file arriving in chunks is; shared by this loader and the quantizing
/// stream (`quantize_stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the 8-byte little-endian header length.
    Len,
    /// Reading the JSON header of this many bytes.
    Header(u64),
    /// Reading tensor data.
    Data,
}

/// Takes from `chunk` what the file's front (its 8-byte length, then its JSON header) still
/// needs, gathering it in `head`: the bytes taken, and the whole JSON header once it is
/// complete (the caller then moves on to `Phase::Data`).
pub(crate) fn take_front(
    phase: &mut Phase,
    head: &mut Vec<u8>,
    chunk: &[u8],
) -> Result<(usize, Option<Vec<u8>>)> {
    match *phase {
        Phase::Len => {
            let n = (8 - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..n]);
            if head.len() == 8 {
                *phase = Phase::Header(header_len(head)?);
                head.clear();
            }
            Ok((n, None))
        }
        Phase::Header(len) => {
            let n = ((len - head.len() as u64) as usize).min(chunk.len());
            head.extend_from_slice(&chunk[..n]);
            let done = head.len() as u64 == len;
            Ok((n, done.then(|| std::mem::take(head))))
        }
        Phase::Data => unreachable!("take_front is for the file's front"),
    }
}

/// The error for a file that ended after `received` bytes in `phase`, `total` bytes being what
/// its header describes; `None` where nothing is missing (`tensors_missing` false in
/// `Phase::Data`).
pub(crate) fn truncation(
    phase: Phase,
    received: u64,
    total: u64,
    tensors_missing: bool,
) -> Option<Error> {
    let msg = match phase {
        Phase::Len => format!(
            "the weights file is truncated: got {received} bytes, not even the 8-byte header length"
        ),
        Phase::Header(len) => format!(
            "the weights file is truncated: got {received} bytes, its header alone needs {}",
            8 + len
        ),
        Phase::Data if tensors_missing => {
            format!("the weights file is truncated: got {received} of {total} bytes")
        }
        Phase::Data => return None,
    };
    Some(Error::model(msg))
}

/// The bytes of an element split across two chunks, kept until the element is whole: what both
/// streams over safetensors data (the loader and the quantizing converter) carry between chunks.
#[derive(Clone, Copy, Default)]
pub(crate) struct Carry {
    bytes: [u8; 8],
    len: usize,
}

impl Carry {
    /// Completes a carried element from the front of `bytes` (which it advances past what it
    /// took), decoding it into `out` once whole.
    pub(crate) fn complete(&mut self, elem: Elem, bytes: &mut &[u8], out: &mut Vec<f32>) {
        if self.len == 0 {
            return;
        }
        let size = elem.size();
        let k = (size - self.len).min(bytes.len());
        self.bytes[self.len..self.len + k].copy_from_slice(&bytes[..k]);
        self.len += k;
        *bytes = &bytes[k..];
        if self.len == size {
            elem.decode(&self.bytes[..size], out);
            self.len = 0;
        }
    }

    /// Keeps `rest`, the start of an element (fewer bytes than one), for the next chunk.
    pub(crate) fn keep(&mut self, rest: &[u8]) {
        self.bytes[self.len..self.len + rest.len()].copy_from_slice(rest);
        self.len += rest.len();
    }

    /// The bytes kept (for a resumable state).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// A carry of these bytes; `None` if they could not be the start of an element.
    pub(crate) fn of(bytes: &[u8]) -> Option<Carry> {
        let mut c = Carry::default();
        (bytes.len() < c.bytes.len()).then(|| {
            c.keep(bytes);
            c
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// A safetensors file being received in chunks; see the module documentation.
pub struct SafetensorsStream {
    phase: Phase,
    /// Bytes of the header length or of the JSON header received so far.
    head: Vec<u8>,
    /// Total bytes pushed.
    received: u64,
    header_len: u64,
    /// Length of the data section the header describes.
    data_len: u64,
    entries: Vec<Entry>,
    next: usize,
    /// Values of the current tensor decoded so far.
    values: Vec<f32>,
    /// Bytes of an element split across two chunks.
    carry: Carry,
    /// Bytes of the current tensor received so far.
    taken: u64,
    tensors: HashMap<String, Tensor>,
    skipped: Vec<String>,
    /// The first error: once a stream is corrupt, every later call reports it again.
    failed: Option<String>,
}

impl Default for SafetensorsStream {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn corrupt(msg: impl std::fmt::Display) -> Error {
    Error::model(format!(
        "the weights file is not a valid safetensors file: {msg}"
    ))
}

impl SafetensorsStream {
    pub fn new() -> Self {
        Self {
            phase: Phase::Len,
            head: Vec::with_capacity(8),
            received: 0,
            header_len: 0,
            data_len: 0,
            entries: Vec::new(),
            next: 0,
            values: Vec::new(),
            carry: Carry::default(),
            taken: 0,
            tensors: HashMap::new(),
            skipped: Vec::new(),
            failed: None,
        }
    }

    /// The whole file's length in bytes, once the header has been parsed.
    pub fn expected_len(&self) -> Option<u64> {
        match self.phase {
            Phase::Data => Some(8 + self.header_len + self.data_len),
            _ => None,
        }
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether every byte the header describes has arrived.
    pub fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Data) && self.next == self.entries.len()
    }

    /// Number of tensors the header lists (0 until it is parsed), and how many are built.
    pub fn progress(&self) -> (usize, usize) {
        (self.entries.len(), self.next)
    }

    /// Names of the non-float tensors that were skipped so far.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Feeds the next bytes of the file. After an error the stream is unusable: every later
    /// `push` and `finish` returns the same error.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(Error::model(msg.clone()));
        }
        match self.push_inner(chunk) {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = match &e {
                    Error::Model(m) => m.clone(),
                    other => other.to_string(),
                };
                self.failed = Some(msg);
                // Let go of what was built: the stream is dead.
                self.tensors = HashMap::new();
                self.values = Vec::new();
                Err(e)
            }
        }
    }

    fn push_inner(&mut self, mut chunk: &[u8]) -> Result<()> {
        while !chunk.is_empty() {
            let n = if self.phase == Phase::Data {
                if self.next == self.entries.len() {
                    return Err(corrupt(format!(
                        "it is longer than its header says ({} bytes)",
                        8 + self.header_len + self.data_len
                    )));
                }
                self.take(chunk)?
            } else {
                let (n, header) = take_front(&mut self.phase, &mut self.head, chunk)?;
                if let Some(head) = header {
                    self.header_len = head.len() as u64;
                    (self.entries, self.data_len) = parse_header(&head)?;
                    self.next = 0;
                    self.phase = Phase::Data;
                    self.start_next()?;
                }
                n
            };
            self.received += n as u64;
            chunk = &chunk[n..];
        }
        Ok(())
    }

    /// Prepares the buffer for the next tensor, building any empty tensors on the way.
    fn start_next(&mut self) -> Result<()> {
        self.taken = 0;
        self.carry = Carry::default();
        while let Some(e) = self.entries.get(self.next) {
            if e.end > e.begin {
                let numel = match e.elem {
                    Elem::Skip(_) => 0,
                    elem => (e.end - e.begin) / elem.size() as u64,
                };
                // Counted in u64 from the header: wasm's 32-bit `usize` must not wrap it.
                let too_large = || {
                    Error::model(format!(
                        "out of memory: cannot allocate {:.1} MB for tensor `{}` of the weights",
                        numel as f64 * 4.0 / 1e6,
                        e.name
                    ))
                };
                let numel = usize::try_from(numel).map_err(|_| too_large())?;
                let mut values = Vec::new();
                values.try_reserve_exact(numel).map_err(|_| too_large())?;
                self.values = values;
                return Ok(());
            }
            self.values = Vec::new();
            self.build()?;
        }
        Ok(())
    }

    /// Consumes bytes of the current tensor from `chunk`; returns how many.
    fn take(&mut self, chunk: &[u8]) -> Result<usize> {
        let (elem, total) = {
            let e = &self.entries[self.next];
            (e.elem, e.end - e.begin)
        };
        let size = elem.size();
        let left = total - self.taken;
        let n = (left.min(chunk.len() as u64)) as usize;
        let mut bytes = &chunk[..n];
        self.carry.complete(elem, &mut bytes, &mut self.values);
        let whole = bytes.len() - bytes.len() % size;
        elem.decode(&bytes[..whole], &mut self.values);
        self.carry.keep(&bytes[whole..]);
        self.taken += n as u64;
        if self.taken == total {
            self.build()?;
            self.start_next()?;
        }
        Ok(n)
    }

    /// Turns the finished buffer of the current tensor into a `Tensor`.
    fn build(&mut self) -> Result<()> {
        let e = &self.entries[self.next];
        let values = std::mem::take(&mut self.values);
        if let Elem::Skip(_) = e.elem {
            self.skipped.push(e.name.clone());
        } else {
            let t = Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu).map_err(|err| {
                Error::weight(e.name.clone(), format!("could not be built: {err}"))
            })?;
            self.tensors.insert(e.name.clone(), t);
        }
        self.next += 1;
        Ok(())
    }

    /// The tensors, as the checkpoint's weights on `device`. Errors if the file was truncated
    /// or an earlier `push` failed.
    pub fn finish(self, device: &Device) -> Result<Weights> {
        let tensors = self.finish_tensors()?;
        Ok(Weights::dense(candle_nn::VarBuilder::from_tensors(
            tensors,
            DType::F32,
            device,
        )))
    }

    /// The tensors themselves (on the CPU), for callers that want them without a `VarBuilder`.
    pub fn finish_tensors(self) -> Result<HashMap<String, Tensor>> {
        if let Some(msg) = self.failed {
            return Err(Error::model(msg));
        }
        let total = 8 + self.header_len + self.data_len;
        let missing = self.next < self.entries.len();
        match truncation(self.phase, self.received, total, missing) {
            Some(e) => Err(e),
            None => Ok(self.tensors),
        }
    }
}

/// The JSON header's length from the file's first 8 bytes, checked to be plausible.
pub(crate) fn header_len(first8: &[u8]) -> Result<u64> {
    let len = u64::from_le_bytes(first8[..8].try_into().expect("8 bytes"));
    if len > MAX_HEADER_LEN {
        return Err(corrupt(format!(
            "its header claims to be {len} bytes long (the limit is {MAX_HEADER_LEN}); is this really a safetensors file?"
        )));
    }
    if len < 2 {
        return Err(corrupt(format!(
            "its header is {len} bytes long, too short for a JSON object"
        )));
    }
    Ok(len)
}

/// The tensors a JSON header lists, in the order of their bytes, checked as the module
/// documentation says, and the length of the data section they cover.
pub(crate) fn parse_header(head: &[u8]) -> Result<(Vec<Entry>, u64)> {
    let value: serde_json::Value = serde_json::from_slice(head)
        .map_err(|e| corrupt(format!("its header is not valid JSON ({e})")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| corrupt("its header is not a JSON object"))?;
    let mut entries = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| corrupt(format!("tensor `{name}` {what}"));
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("has no dtype"))?;
        let elem = Elem::from_dtype(dtype).ok_or_else(|| {
            Error::model(format!(
                "the weights file stores tensor `{name}` as {dtype}, which gitcap does not \
                 support (F32, F16 and BF16 are)"
            ))
        })?;
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("has a shape that is not a list of sizes"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("has no valid data_offsets"))?;
        let (begin, end) = offsets;
        if begin > end {
            return Err(bad(&format!(
                "has data_offsets out of order ({begin} > {end})"
            )));
        }
        let bytes = shape
            .iter()
            .try_fold(elem.size() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad("has an impossibly large shape"))?;
        if bytes != end - begin {
            return Err(bad(&format!(
                "has shape {shape:?} of {dtype} ({bytes} bytes) but data_offsets span {} bytes",
                end - begin
            )));
        }
        entries.push(Entry {
            name: name.clone(),
            elem,
            shape,
            begin,
            end,
        });
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    let mut pos = 0u64;
    for e in &entries {
        if e.begin < pos {
            return Err(corrupt(format!(
                "tensor `{}` overlaps the tensor before it (bytes {}..{} start before {pos})",
                e.name, e.begin, e.end
            )));
        }
        if e.begin > pos {
            return Err(corrupt(format!(
                "there is a hole in the data before tensor `{}` (bytes {pos}..{})",
                e.name, e.begin
            )));
        }
        pos = e.end;
    }
    Ok((entries, pos))
}

/// Loads weights from a sequence of chunks (a convenience over `SafetensorsStream`).
pub fn load_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    device: &Device,
) -> Result<Weights> {
    let mut stream = SafetensorsStream::new();
    for c in chunks {
        stream.push(c)?;
    }
    stream.finish(device)
}
