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
/// `bundle.json` file (any name ending in `.json`): its exact bytes and what they say.
pub fn read_manifest(path: &std::path::Path) -> crate::error::Result<(Vec<u8>, BundleManifest)> {
    use crate::error::Error;
    if path.extension().is_some_and(|e| e == "json") {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if meta.len() > model::MAX_BUNDLE_JSON {
            return Err(Error::bundle(path, "too large for a bundle.json"));
        }
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let m = BundleManifest::parse(&bytes, path)?;
        return Ok((bytes, m));
    }
    // Opening the bundle parsed its bundle.json already; only the bytes are read again.
    let bundle = Bundle::open(path)?;
    let bytes = bundle.bundle_json()?;
    Ok((bytes, bundle.manifest))
}
