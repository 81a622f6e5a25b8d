//! Feeds arbitrary bytes to the bundle reader as a single-file bundle: `Bundle::open`, then,
//! when it opens, the sequential `verify` pass and a read of every blob. Errors are expected;
//! the target looks for panics, hangs and huge allocations.

#![no_main]

use airlock::bundle::Bundle;
use airlock::commands::verify;
use airlock::progress::Reporter;
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One file per fuzzing process, in memory-backed storage when there is some.
fn input_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = root.join(format!("airlock-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz input directory");
        // No NAME.sha256 or NAME.001 beside it: the input is the whole bundle.
        dir.join("bundle.tar.zst")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = input_path();
    std::fs::write(path, data).expect("write the fuzz input");
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
