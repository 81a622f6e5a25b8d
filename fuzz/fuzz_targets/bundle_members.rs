//! Structure-aware companion of `bundle_reader`: the input is an *uncompressed* tar stream,
//! which the target compresses the way airlock writes bundles (one zstd frame per member,
//! then the seek table) before opening, verifying and reading it. Mutations then reach
//! bundle.json, the tar headers and the blobs instead of dying on zstd checksums.

#![no_main]

use airlock::bundle::Bundle;
use airlock::commands::verify;
use airlock::progress::Reporter;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

fn input_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = root.join(format!("airlock-fuzz-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz input directory");
        dir.join("bundle.tar.zst")
    })
}

/// Where each member (header, data, padding) ends, as a tar reader would step: the size
/// field of each 512-byte header. What cannot be parsed is the last piece.
fn member_ends(tar: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let field = &tar[at + 124..at + 136];
        let text: String = field
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        let Ok(size) = u64::from_str_radix(text.trim(), 8) else {
            break;
        };
        let span = 512 + size.div_ceil(512).saturating_mul(512);
        let Some(end) = usize::try_from(span).ok().and_then(|s| at.checked_add(s)) else {
            break;
        };
        if end > tar.len() {
            break;
        }
        ends.push(end);
        at = end;
    }
    if at < tar.len() {
        ends.push(tar.len());
    }
    ends
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    {
        let Ok(mut enc) = zeekstd::EncodeOptions::new()
            .checksum_flag(true)
            .compression_level(1)
            .into_encoder(&mut out)
        else {
            return;
        };
        let mut start = 0;
        for end in member_ends(data) {
            if enc.write_all(&data[start..end]).is_err() || enc.end_frame().is_err() {
                return;
            }
            start = end;
        }
        if enc.finish().is_err() {
            return;
        }
    }
    let path = input_path();
    std::fs::write(path, &out).expect("write the fuzz input");
    let Ok(bundle) = Bundle::open(path).map(std::sync::Arc::new) else {
        return;
    };
    let _ = verify::check_blocking(bundle.clone(), &Reporter::new(true, false));
    let mut buf = vec![0u8; 64 * 1024];
    for blob in &bundle.manifest.blobs {
        if let Ok(mut r) = bundle.open_blob(&blob.digest) {
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }
});
