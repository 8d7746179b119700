// SHA-256 (FIPS 180-4) whose state can be saved and resumed. A download converted while it
// arrives (store_q8.js) keeps only its output, not the source, so when it resumes after an
// interruption the source bytes before that point cannot be hashed again: the hash's own state at
// the resume point has to be saved with the converter's. The WebAssembly module's hasher (sha2)
// cannot give its state out, so the converting path hashes with this one; plain downloads, whose
// stored chunks are read again, keep the faster wasm hasher. Checked against node:crypto by
// tests/e2e/store_q8.test.mjs.

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const INITIAL = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/** Hashes the whole 64-byte blocks of p[off, end) into H. */
function compress(H, W, p, off, end) {
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  let h0 = H[0], h1 = H[1], h2 = H[2], h3 = H[3], h4 = H[4], h5 = H[5], h6 = H[6], h7 = H[7];
  for (; off + 64 <= end; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = dv.getInt32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const x = W[i - 15];
      const y = W[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  H[0] = h0; H[1] = h1; H[2] = h2; H[3] = h3; H[4] = h4; H[5] = h5; H[6] = h6; H[7] = h7;
}

const hex = (bytes) => Array.from(bytes, (x) => x.toString(16).padStart(2, '0')).join('');

export class ResumableSha256 {
  constructor() {
    this.h = Int32Array.from(INITIAL);
    this.w = new Int32Array(64);
    this.tail = new Uint8Array(64); // bytes of an incomplete block
    this.tailLen = 0;
    this.bytes = 0; // bytes hashed so far
  }

  update(data) {
    let off = 0;
    this.bytes += data.length;
    if (this.tailLen > 0) {
      const take = Math.min(64 - this.tailLen, data.length);
      this.tail.set(data.subarray(0, take), this.tailLen);
      this.tailLen += take;
      off = take;
      if (this.tailLen < 64) return;
      compress(this.h, this.w, this.tail, 0, 64);
      this.tailLen = 0;
    }
    const whole = off + ((data.length - off) & ~63);
    compress(this.h, this.w, data, off, whole);
    this.tail.set(data.subarray(whole), 0);
    this.tailLen = data.length - whole;
  }

  /** The digest of everything so far, as 64 hex digits (the hasher can go on afterwards). */
  hex() {
    const h = Int32Array.from(this.h);
    const block = new Uint8Array(128);
    block.set(this.tail.subarray(0, this.tailLen));
    block[this.tailLen] = 0x80;
    const len = this.tailLen + 9 <= 64 ? 64 : 128;
    const dv = new DataView(block.buffer);
    dv.setUint32(len - 8, Math.floor(this.bytes / 0x20000000));
    dv.setUint32(len - 4, (this.bytes * 8) >>> 0);
    compress(h, new Int32Array(64), block, 0, len);
    const out = new Uint8Array(32);
    const odv = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) odv.setInt32(4 * i, h[i]);
    return hex(out);
  }

  /** Plain data (JSON) for ResumableSha256.resume: the words, the byte count, the incomplete block. */
  state() {
    return { h: Array.from(this.h, (x) => x >>> 0), bytes: this.bytes, tail: hex(this.tail.subarray(0, this.tailLen)) };
  }

  static resume(s) {
    const ok =
      s && Array.isArray(s.h) && s.h.length === 8 && s.h.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32) &&
      Number.isSafeInteger(s.bytes) && s.bytes >= 0 && typeof s.tail === 'string' && /^([0-9a-f]{2}){0,63}$/.test(s.tail) &&
      s.tail.length / 2 === s.bytes % 64;
    if (!ok) throw new Error('the saved SHA-256 state is damaged');
    const r = new ResumableSha256();
    r.h = Int32Array.from(s.h, (x) => x | 0);
    r.bytes = s.bytes;
    r.tailLen = s.tail.length / 2;
    for (let i = 0; i < r.tailLen; i++) r.tail[i] = parseInt(s.tail.slice(2 * i, 2 * i + 2), 16);
    return r;
  }

  free() {}
}
