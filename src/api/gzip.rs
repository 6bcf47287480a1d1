//! A small gzip encoder (RFC 1952 around one RFC 1951 DEFLATE block with the fixed Huffman code and greedy LZ77 matching) for the web console's embedded files, compressed once on first use.
//!
//! Why our own: no compression crate is in the dependency tree, and the
//! console's files are a few static texts compressed once per process, so
//! the fixed code's 10–15 % over zlib's best does not matter. Decoding is
//! the browser's (and, in the tests, Python's zlib).

/// Length code bases 257..=285 and their extra bits (RFC 1951 3.2.5).
const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

const WINDOW: usize = 32 * 1024;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
/// Candidates looked at per position: plenty for text this size.
const MAX_CHAIN: usize = 128;
const HASH_BITS: u32 = 15;

/// Bits out, least significant first (DEFLATE's order).
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: its bits go most significant first.
    fn code(&mut self, code: u32, bits: u32) {
        let rev = code.reverse_bits() >> (32 - bits);
        self.put(rev, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The fixed literal/length code of symbol `sym` (RFC 1951 3.2.6).
fn lit(b: &mut Bits, sym: u32) {
    match sym {
        0..=143 => b.code(0x30 + sym, 8),
        144..=255 => b.code(0x190 + sym - 144, 9),
        256..=279 => b.code(sym - 256, 7),
        _ => b.code(0xc0 + sym - 280, 8),
    }
}

fn put_match(b: &mut Bits, len: usize, dist: usize) {
    // Tables are short and sorted: the last base not above the value.
    let li = LEN_BASE
        .iter()
        .rposition(|&x| usize::from(x) <= len)
        .unwrap_or(0);
    lit(b, 257 + li as u32);
    b.put(
        (len - usize::from(LEN_BASE[li])) as u32,
        u32::from(LEN_EXTRA[li]),
    );
    let di = DIST_BASE
        .iter()
        .rposition(|&x| usize::from(x) <= dist)
        .unwrap_or(0);
    b.code(di as u32, 5);
    b.put(
        (dist - usize::from(DIST_BASE[di])) as u32,
        u32::from(DIST_EXTRA[di]),
    );
}

fn hash(d: &[u8], i: usize) -> usize {
    let v = u32::from(d[i]) << 16 | u32::from(d[i + 1]) << 8 | u32::from(d[i + 2]);
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
}

/// One final fixed-Huffman DEFLATE block of `d`.
pub fn deflate(d: &[u8]) -> Vec<u8> {
    let mut b = Bits {
        out: Vec::with_capacity(d.len() / 2),
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // BTYPE = 01, fixed Huffman codes
    let mut head = vec![usize::MAX; 1 << HASH_BITS];
    let mut prev = vec![usize::MAX; d.len()];
    let insert = |head: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        if i + MIN_MATCH <= d.len() {
            let h = hash(d, i);
            prev[i] = head[h];
            head[h] = i;
        }
    };
    let mut i = 0;
    while i < d.len() {
        let mut best = (0, 0);
        if i + MIN_MATCH <= d.len() {
            let mut cand = head[hash(d, i)];
            let max = MAX_MATCH.min(d.len() - i);
            let mut chain = 0;
            while cand != usize::MAX && i - cand <= WINDOW && chain < MAX_CHAIN {
                let l = d[cand..]
                    .iter()
                    .zip(&d[i..i + max])
                    .take_while(|(a, b)| a == b)
                    .count();
                if l > best.0 {
                    best = (l, i - cand);
                    if l == max {
                        break;
                    }
                }
                cand = prev[cand];
                chain += 1;
            }
        }
        if best.0 >= MIN_MATCH {
            put_match(&mut b, best.0, best.1);
            for k in i..i + best.0 {
                insert(&mut head, &mut prev, k);
            }
            i += best.0;
        } else {
            lit(&mut b, u32::from(d[i]));
            insert(&mut head, &mut prev, i);
            i += 1;
        }
    }
    lit(&mut b, 256);
    b.finish()
}

/// CRC-32 (IEEE, reflected), as gzip's trailer needs.
pub fn crc32(d: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in d {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The gzip member of `d` (no name, mtime 0, so the output is reproducible).
pub fn gzip(d: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(deflate(d));
    out.extend(crc32(d).to_le_bytes());
    out.extend((d.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn empty_input_is_the_known_fixed_block() {
        // BFINAL=1, BTYPE=01, end-of-block (7 zero bits): 0x03 0x00.
        assert_eq!(deflate(b""), [0x03, 0x00]);
    }

    #[test]
    fn repetitive_text_shrinks() {
        let t = "castpoint console ".repeat(200);
        let z = gzip(t.as_bytes());
        assert!(z.len() < t.len() / 10, "{} -> {}", t.len(), z.len());
        assert_eq!(&z[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(&z[z.len() - 4..], &(t.len() as u32).to_le_bytes());
    }
}
