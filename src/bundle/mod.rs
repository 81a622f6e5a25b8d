//! The bundle format (DESIGN.md §3): `bundle.json`, `oci-layout`, `index.json`, the
//! docker-archive `manifest.json` and `blobs/sha256/…` in a tar stream, zstd-compressed in
//! independent frames with a seek table, in one file or volumes.

pub mod docker;
pub mod encoder;
pub mod model;
pub mod reader;
pub mod sink;
pub mod volumes;
pub mod writer;

pub use model::{BlobEntry, BundleManifest, ImageEntry};
pub use reader::Bundle;
pub use volumes::SideFile;
pub use writer::BundleWriter;

pub const BUNDLE_JSON: &str = "bundle.json";
pub const OCI_LAYOUT: &str = "oci-layout";
pub const INDEX_JSON: &str = "index.json";
pub const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Size a member takes in the tar stream: header plus data padded to 512 bytes.
pub fn tar_span(size: u64) -> u64 {
    512 + size.div_ceil(512) * 512
}

/// The `bundle.json` of a bundle (its base name or any volume) or an extracted
/// `bundle.json` file (any name ending in `.json`): the digest of its exact bytes and what
/// they say. The bytes are parsed as they are read, never held whole.
pub fn read_manifest(
    path: &std::path::Path,
) -> crate::error::Result<(crate::digest::Digest, BundleManifest)> {
    use crate::error::Error;
    if path.extension().is_some_and(|e| e == "json") {
        let reading = |e| Error::io(format!("reading {}", path.display()), e);
        let f = std::fs::File::open(path).map_err(reading)?;
        if f.metadata().map_err(reading)?.len() > model::MAX_BUNDLE_JSON {
            return Err(Error::bundle(path, "too large for a bundle.json"));
        }
        let (parsed, _, digest) = reader::parse_hashed(f).map_err(reading)?;
        let m =
            parsed.map_err(|e| Error::bundle(path, format!("bundle.json is not valid: {e}")))?;
        m.validate(path)?;
        return Ok((digest, m));
    }
    // Opening the bundle parsed its bundle.json and learnt its digest already.
    let bundle = Bundle::open(path)?;
    let digest = bundle.bundle_json_digest().clone();
    Ok((digest, bundle.manifest))
}
