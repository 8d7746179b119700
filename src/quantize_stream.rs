//! Converting a safetensors file to a gitcap GGUF file while it downloads: the browser keeps
//! the q8_0 file (426 MB for git-large) instead of the 1.6 GB of f32 it fetched.
//!
//! [`QuantizeStream`] is fed the source file in chunks of any size and returns the GGUF bytes that
//! became final with each chunk; concatenated, they are exactly what `gitcap quantize` writes for
//! the same checkpoint (which, for a single safetensors file, runs this same code over the file).
//! The GGUF header goes out as soon as the safetensors header is in, since that lists every
//! tensor's name, dtype, shape and place; then each tensor is converted as its bytes arrive, a
//! few thousand values at a time. What it holds between chunks is small: the source header, at
//! most one incomplete element (< 8 bytes) and one incomplete block of values (< 256).
//!
//! A download interrupted between two chunks resumes from [`QuantizeStream::state`], a small
//! blob (the source header and those carries) that [`QuantizeStream::resume`] turns back into
//! the stream: the caller keeps the output produced so far and the state, not the source.

use sha2::Digest;

use crate::captioner::ModelFiles;
use crate::gguf::QuantType;
use crate::quantize::{check_files, padding, Plan, Planned, Progress, QuantizeSummary};
use crate::stream_load::{
    corrupt, header_len, parse_header, take_front, truncation, Carry, Elem, Entry, Phase,
};
use crate::{Error, Result};

/// Values decoded and converted per step, bounding the scratch memory (64 KB of f32).
const PIECE: usize = 16 * 1024;

const STATE_MAGIC: &[u8; 4] = b"GCQS";
const STATE_VERSION: u32 = 1;

/// A safetensors file being converted to GGUF as it arrives; see the module documentation.
pub struct QuantizeStream {
    quant_type: QuantType,
    source_name: String,
    /// The checkpoint's small files, until they have gone out in the GGUF header.
    files: ModelFiles,
    tied: bool,
    phase: Phase,
    /// Bytes of the header length or of the JSON header received so far.
    head: Vec<u8>,
    /// The JSON header, kept for [`QuantizeStream::state`].
    header_json: Vec<u8>,
    /// Source bytes consumed.
    received: u64,
    /// GGUF bytes produced.
    emitted: u64,
    /// Length of the source's data section.
    data_len: u64,
    entries: Vec<Entry>,
    plan: Option<Plan>,
    /// Length of the GGUF header (with its padding).
    gguf_header_len: u64,
    /// Index in `entries` of the tensor being received.
    next: usize,
    /// Bytes of that tensor received so far.
    taken: u64,
    /// Bytes of an element split across two chunks.
    carry: Carry,
    /// Values of an incomplete block.
    pending: Vec<f32>,
    /// The first error: once a stream is corrupt, every later call reports it again.
    failed: Option<Error>,
}

impl QuantizeStream {
    /// A conversion to `quant_type` of the checkpoint whose small files are `files` (config.json
    /// and a tokenizer at least; they go into the GGUF as metadata). `source_name` is recorded as
    /// `general.name` (`gitcap quantize` records its `--model` argument).
    pub fn new(files: ModelFiles, quant_type: QuantType, source_name: &str) -> Result<Self> {
        let config = check_files(&files, "the checkpoint")?;
        Ok(Self::at_start(
            quant_type,
            source_name.to_string(),
            files,
            config.tie_word_embeddings,
        ))
    }

    /// A stream before its first byte (`new`, and `resume` before it restores the position).
    fn at_start(quant_type: QuantType, source_name: String, files: ModelFiles, tied: bool) -> Self {
        Self {
            quant_type,
            source_name,
            files,
            tied,
            phase: Phase::Len,
            head: Vec::with_capacity(8),
            header_json: Vec::new(),
            received: 0,
            emitted: 0,
            data_len: 0,
            entries: Vec::new(),
            plan: None,
            gguf_header_len: 0,
            next: 0,
            taken: 0,
            carry: Carry::default(),
            pending: Vec::new(),
            failed: None,
        }
    }

    /// Source bytes consumed so far: where a resumed download continues.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// GGUF bytes produced so far: the output to keep when resuming.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The source file's length, once its header is in.
    pub fn source_len(&self) -> Option<u64> {
        (self.phase == Phase::Data).then(|| 8 + self.header_json.len() as u64 + self.data_len)
    }

    /// The GGUF file's length, once the source header is in.
    pub fn output_len(&self) -> Option<u64> {
        let plan = self.plan.as_ref()?;
        Some(self.gguf_header_len + plan.data_bytes)
    }

    /// Whether every byte the source header describes has arrived.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Data && self.next == self.entries.len()
    }

    /// What the conversion stores, once the source header is in.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Source tensors fully received (in file order).
    pub fn entries_done(&self) -> usize {
        self.next
    }

    /// A progress event for the `i`-th source tensor (`i < entries_done()`).
    pub fn entry_progress(&self, i: usize) -> Progress<'_> {
        let plan = self.plan.as_ref().expect("entries are done after the plan");
        let e = &self.entries[i];
        match plan.slots[i] {
            Some(t) => {
                let t = &plan.tensors[t];
                Progress::Converted {
                    name: &t.name,
                    elements: t.elements,
                    dtype: t.dtype,
                }
            }
            None => Progress::Skipped {
                name: &e.name,
                elements: (e.end - e.begin) / e.elem.size() as u64,
            },
        }
    }

    /// Feeds the next source bytes and returns the GGUF bytes that became final.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.push_into(chunk, &mut out)?;
        Ok(out)
    }

    /// As [`QuantizeStream::push`], appending to `out`. After an error the stream is unusable:
    /// every later call returns the same error.
    pub fn push_into(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(again(e));
        }
        let start = out.len();
        let result = self.push_inner(chunk, out);
        self.emitted += (out.len() - start) as u64;
        if let Err(e) = result {
            self.failed = Some(again(&e));
            return Err(e);
        }
        Ok(())
    }

    fn push_inner(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        while !chunk.is_empty() {
            let n = if self.phase == Phase::Data {
                if self.next == self.entries.len() {
                    return Err(corrupt(format!(
                        "it is longer than its header says ({} bytes)",
                        self.source_len().unwrap_or_default()
                    )));
                }
                self.take(chunk, out)?
            } else {
                let (n, header) = take_front(&mut self.phase, &mut self.head, chunk)?;
                if let Some(head) = header {
                    self.start_data(head, out)?;
                }
                n
            };
            self.received += n as u64;
            chunk = &chunk[n..];
        }
        Ok(())
    }

    /// The source header is complete: plan the conversion and write the GGUF header.
    fn start_data(&mut self, header_json: Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
        let (entries, data_len) = parse_header(&header_json)?;
        let plan = plan_entries(&entries, self.quant_type, self.tied)?;
        let header = plan.header(&self.files, &self.source_name);
        self.gguf_header_len = header.len() as u64;
        out.extend_from_slice(&header);
        // They are in the output now; the state need not carry them.
        self.files = ModelFiles::default();
        self.header_json = header_json;
        self.entries = entries;
        self.data_len = data_len;
        self.plan = Some(plan);
        self.phase = Phase::Data;
        self.next = 0;
        self.skip_empty();
        Ok(())
    }

    /// Moves past tensors of no bytes (only integer buffers can be empty: the plan refuses
    /// empty float tensors).
    fn skip_empty(&mut self) {
        self.taken = 0;
        self.carry = Carry::default();
        while self
            .entries
            .get(self.next)
            .is_some_and(|e| e.end == e.begin)
        {
            self.next += 1;
        }
    }

    /// Consumes bytes of the current tensor from `chunk`, converting whole blocks; returns how
    /// many bytes it took.
    fn take(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let plan = self.plan.as_ref().expect("planned before data");
        let e = &self.entries[self.next];
        let total = e.end - e.begin;
        let n = (total - self.taken).min(chunk.len() as u64) as usize;
        if let Some(slot) = plan.slots[self.next] {
            let t = &plan.tensors[slot];
            let elem = e.elem;
            let size = elem.size();
            let mut bytes = &chunk[..n];
            self.carry.complete(elem, &mut bytes, &mut self.pending);
            while bytes.len() >= size {
                let k = (bytes.len() / size).min(PIECE) * size;
                elem.decode(&bytes[..k], &mut self.pending);
                bytes = &bytes[k..];
                flush_units(&mut self.pending, t, out).map_err(|err| {
                    Error::weight(&t.name, format!("could not be converted: {err}"))
                })?;
            }
            flush_units(&mut self.pending, t, out)
                .map_err(|err| Error::weight(&t.name, format!("could not be converted: {err}")))?;
            self.carry.keep(bytes);
            if self.taken + n as u64 == total {
                // Every row divides into blocks (the plan's placement), so nothing is left over.
                debug_assert!(self.pending.is_empty() && self.carry.len() == 0);
                out.resize(out.len() + padding(t.bytes) as usize, 0);
            }
        }
        self.taken += n as u64;
        if self.taken == total {
            self.next += 1;
            self.skip_empty();
        }
        Ok(n)
    }

    /// Checks that the whole source arrived and says what was written. Errors if it was
    /// truncated or an earlier `push` failed.
    pub fn finish(self) -> Result<QuantizeSummary> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let total = self.source_len().unwrap_or_default();
        let missing = self.next < self.entries.len();
        if let Some(e) = truncation(self.phase, self.received, total, missing) {
            return Err(e);
        }
        let len = self.output_len().expect("planned");
        if self.emitted != len {
            return Err(Error::model(format!(
                "internal error: produced {} GGUF bytes, planned {len}",
                self.emitted
            )));
        }
        Ok(self.plan.expect("planned").summary(len))
    }

    /// The stream's position and carries as a byte blob for [`QuantizeStream::resume`]: a few
    /// hundred bytes plus the source header (about 70 KB for git-large), or, before the source
    /// header is complete, the checkpoint's small files too. Pair it with the first
    /// [`QuantizeStream::emitted`] output bytes; the download resumes at
    /// [`QuantizeStream::received`].
    pub fn state(&self) -> Result<Vec<u8>> {
        if let Some(e) = &self.failed {
            return Err(again(e));
        }
        let mut w = Vec::new();
        w.extend_from_slice(STATE_MAGIC);
        put_u32(&mut w, STATE_VERSION);
        w.push(match self.quant_type {
            QuantType::Q8_0 => 0,
            QuantType::Q4K => 1,
            QuantType::F16 => 2,
        });
        w.push(u8::from(self.tied));
        put_bytes(&mut w, self.source_name.as_bytes());
        put_u64(&mut w, self.received);
        put_u64(&mut w, self.emitted);
        match self.phase {
            Phase::Len | Phase::Header(_) => {
                w.push(0);
                put_u64(
                    &mut w,
                    match self.phase {
                        Phase::Header(len) => len,
                        _ => 0,
                    },
                );
                w.push(u8::from(matches!(self.phase, Phase::Header(_))));
                put_bytes(&mut w, &self.head);
                let f = &self.files;
                put_bytes(&mut w, &f.config);
                for file in [
                    &f.generation_config,
                    &f.preprocessor_config,
                    &f.tokenizer_json,
                    &f.tokenizer_config,
                    &f.vocab_txt,
                ] {
                    match file {
                        None => w.push(0),
                        Some(b) => {
                            w.push(1);
                            put_bytes(&mut w, b);
                        }
                    }
                }
            }
            Phase::Data => {
                w.push(1);
                put_bytes(&mut w, &self.header_json);
                put_u64(&mut w, self.gguf_header_len);
                put_u64(&mut w, self.next as u64);
                put_u64(&mut w, self.taken);
                put_bytes(&mut w, self.carry.bytes());
                put_u64(&mut w, self.pending.len() as u64);
                for v in &self.pending {
                    put_u32(&mut w, v.to_bits());
                }
            }
        }
        let sum = sha2::Sha256::digest(&w);
        w.extend_from_slice(&sum[..8]);
        Ok(w)
    }

    /// The stream [`QuantizeStream::state`] described. Every field is checked against the others
    /// (and a checksum), so a damaged or mismatched state is an error, never a wrong file.
    pub fn resume(state: &[u8]) -> Result<Self> {
        let damaged = |why: &str| {
            Error::model(format!(
                "the saved conversion state is damaged ({why}); start the download again"
            ))
        };
        if state.len() < 16 || &state[..4] != STATE_MAGIC {
            return Err(damaged("it is not a gitcap conversion state"));
        }
        let (body, sum) = state.split_at(state.len() - 8);
        if sha2::Sha256::digest(body)[..8] != *sum {
            return Err(damaged("its checksum does not match"));
        }
        let mut r = Reader { bytes: &body[4..] };
        let version = r.u32()?;
        if version != STATE_VERSION {
            return Err(Error::model(format!(
                "the saved conversion state is from another gitcap version ({version}); start the download again"
            )));
        }
        let quant_type = match r.u8()? {
            0 => QuantType::Q8_0,
            1 => QuantType::Q4K,
            2 => QuantType::F16,
            _ => return Err(damaged("unknown type")),
        };
        let tied = r.u8()? != 0;
        let source_name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| damaged("name"))?;
        let received = r.u64()?;
        let emitted = r.u64()?;
        let phase = r.u8()?;
        let mut s = QuantizeStream {
            received,
            emitted,
            ..Self::at_start(quant_type, source_name, ModelFiles::default(), tied)
        };
        match phase {
            0 => {
                let len = r.u64()?;
                let in_header = r.u8()? != 0;
                s.head = r.bytes()?.to_vec();
                let config = r.bytes()?.to_vec();
                let mut opt = || -> Result<Option<Vec<u8>>> {
                    Ok(match r.u8()? {
                        0 => None,
                        _ => Some(r.bytes()?.to_vec()),
                    })
                };
                let files = ModelFiles {
                    config,
                    generation_config: opt()?,
                    preprocessor_config: opt()?,
                    tokenizer_json: opt()?,
                    tokenizer_config: opt()?,
                    vocab_txt: opt()?,
                };
                let fresh = QuantizeStream::new(files, quant_type, &s.source_name)?;
                s.files = fresh.files;
                let consistent = if in_header {
                    s.phase = Phase::Header(header_len(&len.to_le_bytes())?);
                    (s.head.len() as u64) < len && received == 8 + s.head.len() as u64
                } else {
                    s.head.len() < 8 && received == s.head.len() as u64
                };
                if !consistent || emitted != 0 || tied != fresh.tied {
                    return Err(damaged("its position does not add up"));
                }
            }
            1 => {
                let header_json = r.bytes()?.to_vec();
                let (entries, data_len) = parse_header(&header_json)?;
                s.plan = Some(plan_entries(&entries, quant_type, tied)?);
                s.entries = entries;
                s.data_len = data_len;
                s.header_json = header_json;
                s.phase = Phase::Data;
                s.gguf_header_len = r.u64()?;
                s.next = usize::try_from(r.u64()?).map_err(|_| damaged("position"))?;
                s.taken = r.u64()?;
                s.carry = Carry::of(r.bytes()?).ok_or_else(|| damaged("carry"))?;
                let n = r.u64()?;
                if n >= 256 {
                    return Err(damaged("pending values"));
                }
                for _ in 0..n {
                    s.pending.push(f32::from_bits(r.u32()?));
                }
                if !s.position_adds_up() {
                    return Err(damaged("its position does not add up"));
                }
            }
            _ => return Err(damaged("unknown phase")),
        }
        if !r.bytes.is_empty() {
            return Err(damaged("trailing bytes"));
        }
        Ok(s)
    }

    /// Whether a resumed data-phase position is one this stream could have reached.
    fn position_adds_up(&self) -> bool {
        let plan = self.plan.as_ref().expect("data phase");
        let base = 8 + self.header_json.len() as u64;
        let Some(e) = self.entries.get(self.next) else {
            return self.taken == 0
                && self.carry.len() == 0
                && self.pending.is_empty()
                && self.received == base + self.data_len
                && self.emitted == self.gguf_header_len + plan.data_bytes;
        };
        if self.taken >= e.end - e.begin || self.received != base + e.begin + self.taken {
            return false;
        }
        // Output so far: everything stored before this tensor, and this tensor's whole blocks.
        let before = plan.slots[..self.next]
            .iter()
            .rev()
            .find_map(|s| *s)
            .map(|i| {
                let t = &plan.tensors[i];
                t.offset + t.bytes + padding(t.bytes)
            })
            .unwrap_or(0);
        match plan.slots[self.next] {
            None => {
                self.carry.len() == 0
                    && self.pending.is_empty()
                    && self.emitted == self.gguf_header_len + before
            }
            Some(i) => {
                let t = &plan.tensors[i];
                let size = e.elem.size() as u64;
                let block = t.unit() as u64;
                let decoded = self.taken - self.carry.len() as u64;
                if self.carry.len() as u64 >= size || !decoded.is_multiple_of(size) {
                    return false;
                }
                let values = decoded / size;
                self.pending.len() as u64 == values % block
                    && self.emitted
                        == self.gguf_header_len
                            + t.offset
                            + values / block
                                * (t.unit() / t.dtype.block_size()) as u64
                                * t.dtype.type_size() as u64
            }
        }
    }
}

/// The same error once more (`Error` is not `Clone`: candle's errors are not).
fn again(e: &Error) -> Error {
    match e {
        Error::Model(m) => Error::Model(m.clone()),
        Error::Weight { name, problem } => Error::weight(name, problem),
        Error::Invalid(m) => Error::Invalid(m.clone()),
        other => Error::model(other.to_string()),
    }
}

/// Converts the whole units (`Planned::unit`) of `pending` and keeps the rest.
fn flush_units(pending: &mut Vec<f32>, t: &Planned, out: &mut Vec<u8>) -> Result<()> {
    let whole = pending.len() - pending.len() % t.unit();
    if whole > 0 {
        t.encode(&pending[..whole], out)?;
        pending.drain(..whole);
    }
    Ok(())
}

fn plan_entries(entries: &[Entry], quant_type: QuantType, tied: bool) -> Result<Plan> {
    Plan::new(
        entries.iter().map(|e| {
            (
                e.name.clone(),
                e.shape.clone(),
                !matches!(e.elem, Elem::Skip(_)),
            )
        }),
        quant_type,
        tied,
    )
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u64(w, b.len() as u64);
    w.extend_from_slice(b);
}

/// Reads a state blob, failing (not panicking) on a short one.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.bytes.len() as u64 {
            return Err(Error::model(
                "the saved conversion state is damaged (it is cut short); start the download again",
            ));
        }
        let (a, b) = self.bytes.split_at(n as usize);
        self.bytes = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()?;
        self.take(n)
    }
}
