//! Content digests: parsing and validating `sha256:<hex>`, and hashing readers and writers
//! that verify content against its digest and size as it streams by.

use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};

/// A validated `sha256:<64 lowercase hex>` digest. Only sha256 is accepted: it is what every
/// registry uses, and a digest that is not exactly this shape never becomes a file path.
///
/// The 32 bytes of the hash are held inline, not their 71 bytes of text: a bundle of 100,000
/// blobs holds hundreds of thousands of digests (its index, the engine's plan). The text is
/// made on the stack when asked for ([`text`](Self::text)). Digests order as their text does
/// (lowercase hex keeps byte order).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// `sha256:` and 64 hex digits.
const TEXT_LEN: usize = 71;

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| Error::Integrity {
            what: format!("digest {s:?}"),
            detail: "only sha256 digests are supported".into(),
        })?;
        // bundle.json of 100,000 blobs holds 140,000 digests or more: decoded by hand, in
        // one pass that also refuses uppercase.
        fn nibble(b: u8) -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            }
        }
        let mut hash = [0u8; 32];
        let digits = hex.as_bytes();
        if digits.len() == 64
            && digits
                .chunks_exact(2)
                .zip(hash.iter_mut())
                .all(|(pair, out)| match (nibble(pair[0]), nibble(pair[1])) {
                    (Some(hi), Some(lo)) => {
                        *out = hi << 4 | lo;
                        true
                    }
                    _ => false,
                })
        {
            return Ok(Digest(hash));
        }
        Err(Error::Integrity {
            what: format!("digest {s:?}"),
            detail: "not sha256 followed by 64 lowercase hex digits".into(),
        })
    }

    /// The digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::of_hash(&Sha256::digest(bytes).into())
    }

    /// The digest whose hash is `hash` (what SHA-256 gives).
    fn of_hash(hash: &[u8; 32]) -> Digest {
        Digest(*hash)
    }

    /// `sha256:<64 hex>`.
    pub fn text(&self) -> DigestText {
        let mut text = [0u8; TEXT_LEN];
        text[..7].copy_from_slice(b"sha256:");
        // Exactly 64 bytes for 32: this cannot fail.
        let _ = hex::encode_to_slice(self.0, &mut text[7..]);
        DigestText(text)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        self.text().hex().to_string()
    }

    /// Path of this blob inside an OCI image layout.
    pub fn layout_path(&self) -> String {
        format!("blobs/sha256/{}", self.text().hex())
    }

    /// A short form for messages: `sha256:0123456789ab`.
    pub fn short(&self) -> String {
        self.text().short().to_string()
    }
}

/// A digest's text, `sha256:<64 lowercase hex>`, held on the stack.
#[derive(Clone, Copy)]
pub struct DigestText([u8; TEXT_LEN]);

impl DigestText {
    pub fn as_str(&self) -> &str {
        // Only `Digest::text` makes one, and it writes ASCII: this cannot fail.
        std::str::from_utf8(&self.0)
            .unwrap_or("sha256:0000000000000000000000000000000000000000000000000000000000000000")
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.as_str()[7..]
    }

    /// `sha256:` and the first 12 hex digits.
    pub fn short(&self) -> &str {
        &self.as_str()[..19]
    }
}

impl std::ops::Deref for DigestText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for DigestText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sha256 digest")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Digest, E> {
                Digest::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

/// Hashes bytes as they stream and checks them against an expected digest and size.
pub struct Verifier {
    hasher: Sha256,
    seen: u64,
    expected: Digest,
    size: u64,
}

impl Verifier {
    pub fn new(expected: &Digest, size: u64) -> Self {
        Verifier {
            hasher: Sha256::new(),
            seen: 0,
            expected: expected.clone(),
            size,
        }
    }

    /// Feeds bytes; fails as soon as more bytes arrive than the declared size.
    pub fn update(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.seen += bytes.len() as u64;
        if self.seen > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is longer than its declared size {}",
                    self.expected, self.size
                ),
            ));
        }
        self.hasher.update(bytes);
        Ok(())
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks size and digest once everything was fed.
    pub fn finish(self) -> Result<()> {
        let what = format!("blob {}", self.expected);
        if self.seen != self.size {
            return Err(Error::Integrity {
                what,
                detail: format!("expected {} bytes, got {}", self.size, self.seen),
            });
        }
        let actual = Digest::of_hash(&self.hasher.finalize().into());
        if actual != self.expected {
            return Err(Error::Integrity {
                what,
                detail: format!("the content hashes to {actual}"),
            });
        }
        Ok(())
    }
}

/// A reader that verifies what passes through it; at EOF it fails if digest or size differ.
pub struct VerifyingReader<R> {
    inner: R,
    verifier: Option<Verifier>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: &Digest, size: u64) -> Self {
        VerifyingReader {
            inner,
            verifier: Some(Verifier::new(expected, size)),
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(v) = self.verifier.as_mut() {
                v.update(&buf[..n])?;
            }
        } else if let Some(v) = self.verifier.take() {
            v.finish()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
        Ok(n)
    }
}

/// A writer that hashes everything written through it (for the volumes' `.sha256` file).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writer it writes into.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer and the hex sha256 of what was written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }

    /// Returns the inner writer and the digest of what was written.
    pub fn digest(self) -> (W, Digest) {
        (self.inner, Digest::of_hash(&self.hasher.finalize().into()))
    }
}

/// A reader that hashes everything read through it, for content whose digest is learnt, not
/// checked (`bundle.json`, parsed as it is read).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }

    /// How many bytes were read so far.
    pub fn read_so_far(&self) -> u64 {
        self.read
    }

    /// The digest of what was read.
    pub fn digest(self) -> Digest {
        Digest::of_hash(&self.hasher.finalize().into())
    }

    /// The digest of what was read so far, the reader kept.
    pub fn digest_so_far(&self) -> Digest {
        Digest::of_hash(&self.hasher.clone().finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where each digest sits in a list, for lookup by digest: the list's positions sorted by the
/// digest each holds, searched by bisection. A position costs 8 bytes where a hash map from
/// digests costs the digest again and its buckets (at 30,000 blobs, 0.2 MiB against 5 MiB).
/// It indexes the list it was built from and is given that list again at each lookup.
#[derive(Clone, Debug, Default)]
pub struct DigestIndex(Vec<usize>);

impl DigestIndex {
    /// Indexes `items` by `key`.
    pub fn new<T>(items: &[T], key: impl Fn(&T) -> &Digest) -> DigestIndex {
        let mut at: Vec<usize> = (0..items.len()).collect();
        // Stable: of equal digests, the first in the list comes first.
        at.sort_by(|&a, &b| key(&items[a]).cmp(key(&items[b])));
        DigestIndex(at)
    }

    /// The first position in `items` (the list this index was built from) holding `d`.
    pub fn find<T>(&self, items: &[T], key: impl Fn(&T) -> &Digest, d: &Digest) -> Option<usize> {
        let below = self
            .0
            .partition_point(|&i| items.get(i).is_some_and(|t| key(t) < d));
        let &i = self.0.get(below)?;
        items.get(i).filter(|t| key(t) == d).map(|_| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_sha256() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(&d.text()).unwrap(), d);
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&d.text().to_uppercase()).is_err());
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse(&format!("{}0", d)).is_err());
        assert!(Digest::parse(&d.text()[..70]).is_err());
        // Multi-byte text of the right length in bytes is still not a digest.
        assert!(Digest::parse(&format!("sha256:{}é", &d.hex()[..62])).is_err());
    }

    #[test]
    fn digests_order_as_their_text() {
        let mut ds: Vec<Digest> = (0..200u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        let mut texts: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
        ds.sort();
        texts.sort();
        let sorted: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
        assert_eq!(sorted, texts);
    }

    #[test]
    fn reads_and_writes_the_same_text() {
        // The SHA-256 of no bytes, as every registry writes it.
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(&*Digest::of(b"").text(), empty);
        assert_eq!(Digest::of(b"").hex(), &empty[7..]);
        assert_eq!(Digest::of(b"").short(), &empty[..19]);
        assert_eq!(
            Digest::of(b"").layout_path(),
            format!("blobs/sha256/{}", &empty[7..])
        );
        let json = format!("[\"{empty}\"]");
        let parsed: Vec<Digest> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, vec![Digest::of(b"")]);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        // JSON escapes are undone before the digest is checked.
        let escaped = format!("\"\\u0073{}\"", &empty[1..]);
        assert_eq!(
            serde_json::from_str::<Digest>(&escaped).unwrap(),
            Digest::of(b"")
        );
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
        assert!(serde_json::from_str::<Digest>("7").is_err());
    }

    #[test]
    fn verifying_reader_rejects_wrong_content_and_size() {
        let d = Digest::of(b"hello");
        let mut out = Vec::new();
        assert!(VerifyingReader::new(&b"hello"[..], &d, 5)
            .read_to_end(&mut out)
            .is_ok());
        assert!(VerifyingReader::new(&b"hellp"[..], &d, 5)
            .read_to_end(&mut out)
            .is_err());
        assert!(VerifyingReader::new(&b"hell"[..], &d, 5)
            .read_to_end(&mut out)
            .is_err());
        assert!(VerifyingReader::new(&b"hello!"[..], &d, 5)
            .read_to_end(&mut out)
            .is_err());
    }

    #[test]
    fn an_index_finds_every_digest_and_only_those() {
        let items: Vec<(Digest, &str)> = ["c", "a", "b", "a", "d"]
            .iter()
            .map(|s| (Digest::of(s.as_bytes()), *s))
            .collect();
        fn key<'a>(t: &'a (Digest, &str)) -> &'a Digest {
            &t.0
        }
        let index = DigestIndex::new(&items, key);
        for (i, (d, _)) in items.iter().enumerate() {
            let found = index.find(&items, key, d).unwrap();
            assert_eq!(items[found].0, *d);
            // Of two equal digests, the first in the list.
            assert_eq!(found, if i == 3 { 1 } else { i });
        }
        assert_eq!(index.find(&items, key, &Digest::of(b"e")), None);
        let none: Vec<(Digest, &str)> = Vec::new();
        assert_eq!(
            DigestIndex::new(&none, key).find(&none, key, &items[0].0),
            None
        );
    }
}
