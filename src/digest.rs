//! Content digests: parsing and validating `sha256:<hex>`, and hashing readers and writers
//! that verify content against its digest and size as it streams by.

use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};

/// A validated `sha256:<64 lowercase hex>` digest. Only sha256 is accepted: it is what every
/// registry uses, and a digest that is not exactly this shape never becomes a file path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| Error::Integrity {
            what: format!("digest {s:?}"),
            detail: "only sha256 digests are supported".into(),
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::Integrity {
                what: format!("digest {s:?}"),
                detail: "not sha256 followed by 64 lowercase hex digits".into(),
            });
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// Path of this blob inside an OCI image layout.
    pub fn layout_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    /// A short form for messages: `sha256:0123456789ab`.
    pub fn short(&self) -> &str {
        &self.0[..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
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
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != self.expected.as_str() {
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

    /// Returns the inner writer and the hex sha256 of what was written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_sha256() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&d.as_str().to_uppercase()).is_err());
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse(&format!("{}0", d)).is_err());
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
}
