//! HMAC-SHA256 (RFC 2104), truncated to [`TAG_LEN`] bytes for link frames.
//!
//! Written out here rather than taken from the `hmac` crate: it is twenty lines over `sha2`
//! (already in the tree), it keeps the firmware's dependency list short, and it lets a key
//! hold its two padded states already hashed, so each frame costs a clone of them instead of
//! hashing the key again (a tag over a short frame is three SHA-256 blocks on the voter).

use sha2::{Digest, Sha256};

/// Bytes of a link tag: HMAC-SHA256 truncated (RFC 2104 §5 allows at least half the hash).
pub const TAG_LEN: usize = 16;

/// A link tag.
pub type Tag = [u8; TAG_LEN];

/// An HMAC-SHA256 key, kept as the hash states after its inner and outer padded blocks.
#[derive(Clone)]
pub struct MacKey {
    inner: Sha256,
    outer: Sha256,
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// Prepares `key` (a key longer than SHA-256's 64-byte block is hashed first, as RFC 2104
    /// says).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| {
            let mut padded = block;
            padded.iter_mut().for_each(|b| *b ^= byte);
            Sha256::new_with_prefix(padded)
        };
        Self {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// HMAC over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        parts.iter().for_each(|p| inner.update(p));
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// The tag of `msg` under a one-byte `label` (which kind of message, which direction).
    pub fn tag(&self, label: u8, msg: &[u8]) -> Tag {
        let mac = self.mac(&[&[label], msg]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&mac[..TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag of `msg` under `label`, compared in constant time.
    pub fn verify(&self, label: u8, msg: &[u8], tag: &[u8]) -> bool {
        ct_eq(&self.tag(label, msg), tag)
    }
}

/// Whether `a == b`, taking the same time whichever bytes differ (a byte-by-byte compare that
/// stops early would tell a forger how many leading bytes of a tag were right).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> alloc::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 4231's test cases 1, 2, 4 and 6 (a key longer than a block).
    #[test]
    fn matches_rfc_4231() {
        let cases: [(&[u8], &[u8], &str); 4] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, want) in cases {
            let key = MacKey::new(key);
            assert_eq!(key.mac(&[data]).as_slice(), hex(want).as_slice());
            // Split input hashes the same; the key is reusable.
            let (a, b) = data.split_at(data.len() / 2);
            assert_eq!(key.mac(&[a, b]).as_slice(), hex(want).as_slice());
        }
    }

    #[test]
    fn tags_depend_on_the_label_and_verify_only_whole() {
        let key = MacKey::new(b"k");
        let tag = key.tag(b'Q', b"msg");
        assert!(key.verify(b'Q', b"msg", &tag));
        assert!(!key.verify(b'A', b"msg", &tag));
        assert!(!key.verify(b'Q', b"msh", &tag));
        assert!(!key.verify(b'Q', b"msg", &tag[..15]));
        let mut flipped = tag;
        flipped[15] ^= 1;
        assert!(!key.verify(b'Q', b"msg", &flipped));
        assert!(!MacKey::new(b"j").verify(b'Q', b"msg", &tag));
    }
}
