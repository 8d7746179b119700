//! Baseline / extended-sequential / progressive Huffman JPEG, 8-bit, 1 or 3 components, decoded
//! the way libjpeg-turbo does with Pillow's settings: `jpeg_idct_islow`, fancy upsampling
//! (h2v1, h2v2, h1v2; box for other integral factors), `ycc_rgb_convert` with its 16-bit
//! tables, colour space chosen as in `default_decompress_parms`. `image`'s decoder (zune-jpeg)
//! differs from libjpeg by up to a few grey levels, which is why this exists. Anything else
//! (arithmetic coding, 12-bit, lossless, CMYK, fractional sampling, missing Huffman tables)
//! returns `Ok(None)` and the caller falls back to the `image` crate.

use super::{ImageLimits, TRUNCATED};
use crate::{Error, Result};

pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub exif: Option<Vec<u8>>,
    pub xmp: Option<Vec<u8>>,
}

/// Zigzag index -> natural index, with libjpeg's 16 extra entries so a corrupt run
/// length cannot index out of the block.
const NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];
const MAX_SCANS: usize = 1000;

fn corrupt(msg: &str) -> Error {
    Error::image(format!("{TRUNCATED} (JPEG: {msg})"))
}

// ----- Huffman tables (jdhuff.c) -----

#[derive(Clone)]
struct Huff {
    /// 9-bit lookahead: (length << 8) | symbol, 0 when the code is longer
    fast: Vec<u16>,
    maxcode: [i32; 17],
    valoffset: [i32; 17],
    vals: Vec<u8>,
}

impl Huff {
    fn new(counts: &[u8], vals: &[u8]) -> Option<Huff> {
        let mut fast = vec![0u16; 512];
        let mut maxcode = [-1i32; 17];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for l in 1..=16usize {
            let n = usize::from(counts[l - 1]);
            valoffset[l] = k as i32 - code as i32;
            for _ in 0..n {
                let sym = *vals.get(k)?;
                if code >= 1 << l {
                    return None; // more codes than fit in l bits
                }
                if l <= 9 {
                    let shift = 9 - l;
                    for j in 0..(1u32 << shift) {
                        fast[((code << shift) | j) as usize] = ((l as u16) << 8) | u16::from(sym);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[l] = code as i32 - 1;
            }
            if code >= 1 << l {
                return None;
            }
            code <<= 1;
        }
        Some(Huff {
            fast,
            maxcode,
            valoffset,
            vals: vals.to_vec(),
        })
    }

    #[inline]
    fn decode(&self, br: &mut BitReader) -> u8 {
        let peek = br.peek16();
        let f = self.fast[(peek >> 7) as usize];
        if f != 0 {
            br.consume(u32::from(f >> 8));
            return f as u8;
        }
        for l in 10..=16usize {
            let code = (peek >> (16 - l)) as i32;
            if code <= self.maxcode[l] {
                br.consume(l as u32);
                let i = (code + self.valoffset[l]) as usize;
                return self.vals.get(i).copied().unwrap_or(0);
            }
        }
        // libjpeg: "Corrupt JPEG data: bad Huffman code", returns 0
        br.consume(16);
        0
    }
}

// ----- entropy-coded data (jdhuff.c fill_bit_buffer) -----

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    /// a marker (or the end of the data) was reached: zeros are fed from here on
    stopped: bool,
    eof: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            stopped: false,
            eof: false,
        }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.stopped {
                match self.data.get(self.pos) {
                    None => {
                        self.stopped = true;
                        self.eof = true;
                    }
                    Some(&b) if b != 0xFF => {
                        byte = b;
                        self.pos += 1;
                    }
                    Some(_) => {
                        let mut p = self.pos + 1;
                        while self.data.get(p) == Some(&0xFF) {
                            p += 1;
                        }
                        match self.data.get(p) {
                            None => {
                                self.stopped = true;
                                self.eof = true;
                            }
                            Some(0) => {
                                byte = 0xFF;
                                self.pos = p + 1;
                            }
                            Some(_) => self.stopped = true, // pos stays on the marker
                        }
                    }
                }
            }
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn peek16(&mut self) -> u32 {
        if self.nbits < 16 {
            self.fill();
        }
        (self.acc >> 48) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.nbits -= n;
    }

    #[inline]
    fn bits(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as i32;
        self.consume(n);
        v
    }

    /// At a restart boundary: drop buffered bits and consume the RSTn marker.
    fn restart(&mut self) {
        self.acc = 0;
        self.nbits = 0;
        self.stopped = false;
        if let Some((m, after)) = next_marker(self.data, self.pos) {
            if (0xD0..=0xD7).contains(&m) {
                self.pos = after;
            } else {
                // not a restart marker: leave it, zeros are fed (libjpeg's resync action 3)
                self.pos = after - 2;
                self.stopped = true;
            }
        } else {
            self.stopped = true;
            self.eof = true;
        }
    }
}

#[inline]
fn extend(v: i32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v + (-1 << s) + 1
    } else {
        v
    }
}

/// The next marker at or after `pos`: (marker code, position after the two marker bytes).
fn next_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        while data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        match *data.get(pos + 1)? {
            0x00 => pos += 2,
            m => return Some((m, pos + 2)),
        }
    }
}

// ----- inverse DCT (jidctint.c, jpeg_idct_islow) -----

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1i64 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: `sample_range_limit[CENTERJSAMPLE + (x & 1023)]`.
#[inline]
fn range_limit(x: i64) -> u8 {
    let i = (x as i32 & 1023) as usize;
    if i < 128 {
        (i + 128) as u8
    } else if i < 512 {
        255
    } else if i < 896 {
        0
    } else {
        (i - 896) as u8
    }
}

/// The shared odd/even butterfly of both passes; returns the 8 outputs before descaling.
#[inline]
fn butterfly(v: [i64; 8]) -> [i64; 8] {
    // even part
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;
    // odd part
    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

fn idct_islow(coef: &[i16], q: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let c = |r: usize| i64::from(coef[r * 8 + col]) * i64::from(q[r * 8 + col]);
        if (1..8).all(|r| coef[r * 8 + col] == 0) {
            let dc = (c(0) << PASS1_BITS) as i32;
            for r in 0..8 {
                ws[r * 8 + col] = dc;
            }
            continue;
        }
        let o = butterfly([c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7)]);
        for r in 0..8 {
            ws[r * 8 + col] = descale(o[r], CONST_BITS - PASS1_BITS) as i32;
        }
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let dst = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&x| x == 0) {
            dst.fill(range_limit(descale(i64::from(w[0]), PASS1_BITS + 3)));
            continue;
        }
        let o = butterfly(std::array::from_fn(|i| i64::from(w[i])));
        for (d, v) in dst.iter_mut().zip(o) {
            *d = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

// ----- frame -----

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// downsampled size (libjpeg's downsampled_width / _height)
    w: usize,
    hgt: usize,
    /// allocated blocks per row / column (padded to whole MCUs)
    bw: usize,
    bh: usize,
    qt: Option<[u16; 64]>,
    plane: Vec<u8>,
    coefs: Vec<i16>,
    pred: i32,
}

impl Component {
    fn block_out(&mut self, bx: usize, by: usize) -> &mut [u8] {
        let stride = self.bw * 8;
        &mut self.plane[by * 8 * stride + bx * 8..]
    }
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
}

struct Scan {
    comps: Vec<(usize, usize, usize)>, // (component index, dc table, ac table)
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

/// Decodes `data` (a complete JPEG file, checked by `check_jpeg_complete`), or `Ok(None)`
/// when it uses a feature this decoder leaves to the `image` crate.
pub(crate) fn decode(data: &[u8], limits: &ImageLimits) -> Result<Option<Decoded>> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(corrupt("missing start-of-image marker"));
    }
    let mut qts: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huff>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huff>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut saw_jfif = false;
    let mut adobe_transform: Option<u8> = None;
    let mut exif = None;
    let mut xmp = None;
    let mut scans = 0usize;
    let mut pos = 2usize;

    loop {
        let Some((marker, after)) = next_marker(data, pos) else {
            return Err(corrupt("the data ends before the end-of-image marker"));
        };
        pos = after;
        match marker {
            0xD9 => break,
            0xD8 => return Err(corrupt("two start-of-image markers")),
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = match data.get(pos..pos + 2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => return Err(corrupt("the data ends inside a marker segment")),
        };
        if len < 2 || pos + len > data.len() {
            return Err(corrupt("bad marker segment length"));
        }
        let seg = &data[pos + 2..pos + len];
        pos += len;
        match marker {
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return Err(corrupt("more than one frame header"));
                }
                match parse_frame(seg, marker == 0xC2, limits)? {
                    Some(f) => frame = Some(f),
                    None => return Ok(None),
                }
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDC => return Ok(None),
            0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
            0xDB => parse_dqt(seg, &mut qts)?,
            0xDD => {
                if seg.len() < 2 {
                    return Err(corrupt("bad restart interval"));
                }
                restart_interval = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
            }
            0xE0 if seg.starts_with(b"JFIF\0") => saw_jfif = true,
            // Pillow keeps the first EXIF block
            0xE1 if seg.starts_with(b"Exif\0\0") && exif.is_none() => {
                exif = Some(seg[6..].to_vec());
            }
            0xE1 if seg.starts_with(b"http://ns.adobe.com/xap/1.0/\0") => {
                xmp = Some(seg[29..].to_vec());
            }
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                adobe_transform = Some(seg[11]);
            }
            0xDA => {
                let Some(f) = frame.as_mut() else {
                    return Err(corrupt("scan before the frame header"));
                };
                scans += 1;
                if scans > MAX_SCANS {
                    return Err(corrupt("too many scans"));
                }
                let scan = parse_sos(seg, f)?;
                // tables: a missing one means libjpeg-turbo's defaults (Motion JPEG)
                for &(ci, td, ta) in &scan.comps {
                    let needs_dc = !f.progressive || (scan.ss == 0 && scan.ah == 0);
                    let needs_ac = !f.progressive || scan.ss > 0;
                    if (needs_dc && dc_tables[td].is_none())
                        || (needs_ac && ac_tables[ta].is_none())
                    {
                        return Ok(None);
                    }
                    if needs_dc
                        && dc_tables[td]
                            .as_ref()
                            .is_some_and(|t| t.vals.iter().any(|&s| s > 15))
                    {
                        return Err(corrupt("bad Huffman table"));
                    }
                    let c = &mut f.comps[ci];
                    if c.qt.is_none() {
                        c.qt =
                            Some(qts[c.tq].ok_or_else(|| corrupt("missing quantization table"))?);
                    }
                }
                pos = decode_scan(
                    data,
                    pos,
                    f,
                    &scan,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
            }
            _ => {}
        }
    }

    let Some(mut f) = frame else {
        return Err(corrupt("no frame header"));
    };
    if scans == 0 {
        return Err(corrupt("no image data"));
    }
    if f.progressive {
        for c in f.comps.iter_mut() {
            let q = c.qt.unwrap_or([0; 64]);
            let stride = c.bw * 8;
            for by in 0..c.bh {
                for bx in 0..c.bw {
                    let i = (by * c.bw + bx) * 64;
                    let coef = &c.coefs[i..i + 64];
                    let out = &mut c.plane[by * 8 * stride + bx * 8..];
                    idct_islow(coef, &q, out, stride);
                }
            }
            c.coefs = Vec::new();
        }
    }

    let ycc = f.comps.len() == 3
        && if saw_jfif {
            true
        } else if let Some(t) = adobe_transform {
            t != 0
        } else {
            let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
            ids != [b'R', b'G', b'B']
        };
    let rgb = to_rgb(&f, ycc);
    Ok(Some(Decoded {
        width: f.width as u32,
        height: f.height as u32,
        rgb,
        exif,
        xmp,
    }))
}

fn parse_frame(seg: &[u8], progressive: bool, limits: &ImageLimits) -> Result<Option<Frame>> {
    if seg.len() < 6 {
        return Err(corrupt("short frame header"));
    }
    if seg[0] != 8 {
        return Ok(None); // 12-bit etc.
    }
    let height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
    let width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
    let n = usize::from(seg[5]);
    if height == 0 {
        return Ok(None); // height from a DNL marker
    }
    limits.check(width as u32, height as u32)?;
    if n != 1 && n != 3 {
        return Ok(None);
    }
    if seg.len() < 6 + 3 * n {
        return Err(corrupt("short frame header"));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v, tq) = (
            usize::from(c[1] >> 4),
            usize::from(c[1] & 15),
            usize::from(c[2]),
        );
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
            return Err(corrupt("bad component sampling factors"));
        }
        comps.push((c[0], h, v, tq));
    }
    let hmax = comps.iter().map(|c| c.1).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.2).max().unwrap_or(1);
    if comps.iter().any(|c| hmax % c.1 != 0 || vmax % c.2 != 0) {
        return Ok(None); // fractional sampling: libjpeg refuses too
    }
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    let mut bytes = (width as u64) * (height as u64) * 3;
    for c in &comps {
        let samples = (mcux * c.1 * 8) as u64 * (mcuy * c.2 * 8) as u64;
        bytes += samples * if progressive { 3 } else { 1 };
    }
    if bytes > limits.max_alloc {
        return Err(super::decode::too_much_memory(
            width as u32,
            height as u32,
            bytes,
            limits,
        ));
    }
    let comps = comps
        .into_iter()
        .map(|(id, h, v, tq)| {
            let (bw, bh) = (mcux * h, mcuy * v);
            Component {
                id,
                h,
                v,
                tq,
                w: (width * h).div_ceil(hmax),
                hgt: (height * v).div_ceil(vmax),
                bw,
                bh,
                qt: None,
                plane: vec![128; bw * bh * 64],
                coefs: if progressive {
                    vec![0; bw * bh * 64]
                } else {
                    Vec::new()
                },
                pred: 0,
            }
        })
        .collect();
    Ok(Some(Frame {
        width,
        height,
        progressive,
        comps,
        hmax,
        vmax,
        mcux,
        mcuy,
    }))
}

fn parse_dht(mut seg: &[u8], dc: &mut [Option<Huff>; 4], ac: &mut [Option<Huff>; 4]) -> Result<()> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return Err(corrupt("short Huffman table"));
        }
        let (class, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
        if class > 1 || id > 3 {
            return Err(corrupt("bad Huffman table id"));
        }
        let counts = &seg[1..17];
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || seg.len() < 17 + total {
            return Err(corrupt("bad Huffman table"));
        }
        let table =
            Huff::new(counts, &seg[17..17 + total]).ok_or_else(|| corrupt("bad Huffman table"))?;
        if class == 0 {
            dc[id] = Some(table);
        } else {
            ac[id] = Some(table);
        }
        seg = &seg[17 + total..];
    }
    Ok(())
}

fn parse_dqt(mut seg: &[u8], qts: &mut [Option<[u16; 64]>; 4]) -> Result<()> {
    while !seg.is_empty() {
        let (pq, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
        if pq > 1 || id > 3 {
            return Err(corrupt("bad quantization table"));
        }
        let n = if pq == 0 { 64 } else { 128 };
        if seg.len() < 1 + n {
            return Err(corrupt("short quantization table"));
        }
        let mut t = [0u16; 64];
        for (i, &nat) in NATURAL[..64].iter().enumerate() {
            t[nat] = if pq == 0 {
                u16::from(seg[1 + i])
            } else {
                u16::from_be_bytes([seg[1 + 2 * i], seg[2 + 2 * i]])
            };
        }
        qts[id] = Some(t);
        seg = &seg[1 + n..];
    }
    Ok(())
}

fn parse_sos(seg: &[u8], f: &Frame) -> Result<Scan> {
    let n = usize::from(*seg.first().ok_or_else(|| corrupt("short scan header"))?);
    if n == 0 || n > 4 || seg.len() < 1 + 2 * n + 3 {
        return Err(corrupt("bad scan header"));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let (id, t) = (seg[1 + 2 * i], seg[2 + 2 * i]);
        let ci = f
            .comps
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| corrupt("scan refers to an unknown component"))?;
        let (td, ta) = (usize::from(t >> 4), usize::from(t & 15));
        if td > 3 || ta > 3 {
            return Err(corrupt("bad Huffman table id in scan"));
        }
        comps.push((ci, td, ta));
    }
    let p = 1 + 2 * n;
    let (ss, se, ah, al) = (
        usize::from(seg[p]),
        usize::from(seg[p + 1]),
        u32::from(seg[p + 2] >> 4),
        u32::from(seg[p + 2] & 15),
    );
    if f.progressive {
        // jdphuff.c start_pass_phuff_decoder
        let bad = if ss == 0 {
            se != 0
        } else {
            se < ss || se > 63 || n != 1
        };
        if bad || (ah != 0 && al != ah - 1) || al > 13 {
            return Err(corrupt("bad progression parameters"));
        }
    }
    let blocks: usize = comps
        .iter()
        .map(|&(ci, _, _)| f.comps[ci].h * f.comps[ci].v)
        .sum();
    if n > 1 && blocks > 10 {
        return Err(corrupt("too many blocks in an MCU"));
    }
    Ok(Scan {
        comps,
        ss,
        se,
        ah,
        al,
    })
}

/// Decodes one scan starting at `pos`; returns the position after its entropy-coded data.
#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    pos: usize,
    f: &mut Frame,
    scan: &Scan,
    dc_tables: &[Option<Huff>; 4],
    ac_tables: &[Option<Huff>; 4],
    restart_interval: usize,
) -> Result<usize> {
    let mut br = BitReader::new(data, pos);
    for &(ci, _, _) in &scan.comps {
        f.comps[ci].pred = 0;
    }
    let mut eobrun = 0u32;
    let mut block = [0i16; 64];
    let single = scan.comps.len() == 1;
    // units: blocks of the one component for a non-interleaved scan, MCUs otherwise
    let (ux, uy) = if single {
        let c = &f.comps[scan.comps[0].0];
        (c.w.div_ceil(8), c.hgt.div_ceil(8))
    } else {
        (f.mcux, f.mcuy)
    };
    let mut todo = restart_interval;
    for uyi in 0..uy {
        for uxi in 0..ux {
            if restart_interval > 0 {
                if todo == 0 {
                    br.restart();
                    for &(ci, _, _) in &scan.comps {
                        f.comps[ci].pred = 0;
                    }
                    eobrun = 0;
                    todo = restart_interval;
                }
                todo -= 1;
            }
            for &(ci, td, ta) in &scan.comps {
                let (bh_n, bv_n) = if single {
                    (1, 1)
                } else {
                    (f.comps[ci].h, f.comps[ci].v)
                };
                for by_off in 0..bv_n {
                    for bx_off in 0..bh_n {
                        let (bx, by) = if single {
                            (uxi, uyi)
                        } else {
                            (uxi * bh_n + bx_off, uyi * bv_n + by_off)
                        };
                        let c = &mut f.comps[ci];
                        if !f.progressive {
                            decode_block_seq(
                                &mut br,
                                dc_tables[td].as_ref().expect("checked"),
                                ac_tables[ta].as_ref().expect("checked"),
                                &mut c.pred,
                                &mut block,
                            );
                            let q = c.qt.expect("latched");
                            let stride = c.bw * 8;
                            idct_islow(&block, &q, c.block_out(bx, by), stride);
                            continue;
                        }
                        let i = (by * c.bw + bx) * 64;
                        let coef = &mut c.coefs[i..i + 64];
                        if scan.ss == 0 {
                            if scan.ah == 0 {
                                let t = dc_tables[td].as_ref().expect("checked");
                                let s = u32::from(t.decode(&mut br));
                                let diff = extend(br.bits(s), s);
                                c.pred = c.pred.wrapping_add(diff);
                                coef[0] = (c.pred << scan.al) as i16;
                            } else if br.bits(1) != 0 {
                                coef[0] |= 1 << scan.al;
                            }
                        } else if scan.ah == 0 {
                            let t = ac_tables[ta].as_ref().expect("checked");
                            ac_first(&mut br, t, coef, scan, &mut eobrun);
                        } else {
                            let t = ac_tables[ta].as_ref().expect("checked");
                            ac_refine(&mut br, t, coef, scan, &mut eobrun);
                        }
                    }
                }
            }
        }
    }
    if br.eof {
        return Err(corrupt("the data ends inside a scan"));
    }
    // continue at the next marker (libjpeg skips any stray bytes before it)
    match next_marker(data, br.pos) {
        Some((_, after)) => Ok(after - 2),
        None => Err(corrupt("the data ends before the end-of-image marker")),
    }
}

fn decode_block_seq(
    br: &mut BitReader,
    dc: &Huff,
    ac: &Huff,
    pred: &mut i32,
    block: &mut [i16; 64],
) {
    block.fill(0);
    let s = u32::from(dc.decode(br));
    let diff = extend(br.bits(s), s);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = ac.decode(br);
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            let v = extend(br.bits(s), s);
            block[NATURAL[k]] = v as i16;
        } else {
            if r != 15 {
                break;
            }
            k += 15;
        }
        k += 1;
    }
}

fn ac_first(br: &mut BitReader, t: &Huff, coef: &mut [i16], scan: &Scan, eobrun: &mut u32) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = t.decode(br);
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r as usize;
            let v = extend(br.bits(s), s);
            coef[NATURAL[k]] = ((v as u32) << scan.al) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = 1 << r;
            if r != 0 {
                *eobrun += br.bits(r) as u32;
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
}

fn ac_refine(br: &mut BitReader, t: &Huff, coef: &mut [i16], scan: &Scan, eobrun: &mut u32) {
    let p1: i16 = 1 << scan.al;
    let m1: i16 = (-1i16) << scan.al;
    let mut k = scan.ss;
    let refine = |c: &mut i16, br: &mut BitReader| {
        if br.bits(1) != 0 && (*c & p1) == 0 {
            *c = if *c >= 0 {
                c.wrapping_add(p1)
            } else {
                c.wrapping_add(m1)
            };
        }
    };
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = t.decode(br);
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            let mut newval = 0i16;
            if s != 0 {
                newval = if br.bits(1) != 0 { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r != 0 {
                    *eobrun += br.bits(r as u32) as u32;
                }
                break;
            }
            loop {
                let c = &mut coef[NATURAL[k]];
                if *c != 0 {
                    refine(c, br);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
                if k > scan.se {
                    break;
                }
            }
            if s != 0 {
                coef[NATURAL[k]] = newval;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let c = &mut coef[NATURAL[k]];
            if *c != 0 {
                refine(c, br);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}

// ----- upsampling (jdsample.c) and colour conversion (jdcolor.c) -----

/// Upsamples row `y` of component `c` to full width into `out` (`tmp`: scratch of at
/// least `2 * c.w` bytes). Returns the row, which is the plane itself for full-size
/// components.
fn upsample_row<'a>(
    c: &'a Component,
    hmax: usize,
    vmax: usize,
    y: usize,
    tmp: &mut [u8],
    out: &'a mut [u8],
) -> &'a [u8] {
    let (hf, vf) = (hmax / c.h, vmax / c.v);
    let stride = c.bw * 8;
    let w = c.w;
    let row = |r: usize| &c.plane[r * stride..r * stride + w];
    let width = out.len();
    match (hf, vf) {
        (1, 1) => return &row(y)[..width],
        (2, 1) if w > 2 => {
            let inp = row(y);
            let t = &mut tmp[..2 * w];
            t[0] = inp[0];
            t[1] = ((u32::from(inp[0]) * 3 + u32::from(inp[1]) + 2) >> 2) as u8;
            for (o, win) in t[2..2 * w - 2].chunks_exact_mut(2).zip(inp.windows(3)) {
                let v = u32::from(win[1]) * 3;
                o[0] = ((v + u32::from(win[0]) + 1) >> 2) as u8;
                o[1] = ((v + u32::from(win[2]) + 2) >> 2) as u8;
            }
            t[2 * w - 2] = ((u32::from(inp[w - 1]) * 3 + u32::from(inp[w - 2]) + 1) >> 2) as u8;
            t[2 * w - 1] = inp[w - 1];
            out.copy_from_slice(&t[..width]);
        }
        (2, 2) if w > 2 => {
            let r = y / 2;
            let ctx = if y.is_multiple_of(2) {
                r.saturating_sub(1)
            } else {
                (r + 1).min(c.hgt - 1)
            };
            let (i0, i1) = (row(r), row(ctx));
            let t = &mut tmp[..2 * w];
            // column sums: 3 * nearer row + further row
            let sum = |x: usize| u32::from(i0[x]) * 3 + u32::from(i1[x]);
            let (first, second) = (sum(0), sum(1));
            t[0] = ((first * 4 + 8) >> 4) as u8;
            t[1] = ((first * 3 + second + 7) >> 4) as u8;
            let (mut last, mut this) = (first, second);
            for (x, o) in (2..w).zip(t[2..2 * w - 2].chunks_exact_mut(2)) {
                let next = sum(x);
                o[0] = ((this * 3 + last + 8) >> 4) as u8;
                o[1] = ((this * 3 + next + 7) >> 4) as u8;
                last = this;
                this = next;
            }
            t[2 * w - 2] = ((this * 3 + last + 8) >> 4) as u8;
            t[2 * w - 1] = ((this * 4 + 7) >> 4) as u8;
            out.copy_from_slice(&t[..width]);
        }
        (1, 2) => {
            let r = y / 2;
            let (ctx, bias) = if y.is_multiple_of(2) {
                (r.saturating_sub(1), 1)
            } else {
                ((r + 1).min(c.hgt - 1), 2)
            };
            let (i0, i1) = (row(r), row(ctx));
            for ((o, &a), &b) in out.iter_mut().zip(i0).zip(i1) {
                *o = ((u32::from(a) * 3 + u32::from(b) + bias) >> 2) as u8;
            }
        }
        _ => {
            let inp = row((y / vf).min(c.hgt - 1));
            for (x, o) in out.iter_mut().enumerate() {
                *o = inp[(x / hf).min(w - 1)];
            }
        }
    }
    out
}

fn to_rgb(f: &Frame, ycc: bool) -> Vec<u8> {
    let width = f.width;
    let mut rgb = vec![0u8; width * f.height * 3];
    let mut bufs = vec![vec![0u8; width]; f.comps.len()];
    let mut tmp = vec![0u8; 2 * f.comps.iter().map(|c| c.w).max().unwrap_or(0) + 2];
    // jdcolor.c build_ycc_rgb_table (SCALEBITS = 16)
    const ONE_HALF: i32 = 1 << 15;
    let fix = |x: f64| (x * 65536.0 + 0.5) as i32;
    let table =
        |f: &dyn Fn(i32) -> i32| -> [i32; 256] { std::array::from_fn(|i| f(i as i32 - 128)) };
    let cr_r = table(&|x| (fix(1.402) * x + ONE_HALF) >> 16);
    let cb_b = table(&|x| (fix(1.772) * x + ONE_HALF) >> 16);
    let cr_g = table(&|x| -fix(0.71414) * x);
    let cb_g = table(&|x| -fix(0.34414) * x + ONE_HALF);
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    for (y, out) in rgb.chunks_exact_mut(width * 3).enumerate() {
        let mut rows: Vec<&[u8]> = Vec::with_capacity(3);
        for (c, buf) in f.comps.iter().zip(bufs.iter_mut()) {
            rows.push(upsample_row(c, f.hmax, f.vmax, y, &mut tmp, buf));
        }
        match rows[..] {
            [g] => {
                for (o, &g) in out.chunks_exact_mut(3).zip(g) {
                    o.fill(g);
                }
            }
            [y0, cb, cr] if ycc => {
                for (o, ((&yy, &cb), &cr)) in out.chunks_exact_mut(3).zip(y0.iter().zip(cb).zip(cr))
                {
                    let (yy, cb, cr) = (i32::from(yy), usize::from(cb), usize::from(cr));
                    o[0] = clamp(yy + cr_r[cr]);
                    o[1] = clamp(yy + ((cb_g[cb] + cr_g[cr]) >> 16));
                    o[2] = clamp(yy + cb_b[cb]);
                }
            }
            [r, g, b] => {
                for (o, ((&r, &g), &b)) in out.chunks_exact_mut(3).zip(r.iter().zip(g).zip(b)) {
                    o.copy_from_slice(&[r, g, b]);
                }
            }
            _ => unreachable!("1 or 3 components"),
        }
    }
    rgb
}
