//! Reading bundles without airlock: bundle.json with zstd and tar, the published schema.

use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::airlock::describe_output;

// ---------------------------------------------------------------------------------------------
// Reading bundles without airlock
// ---------------------------------------------------------------------------------------------

/// bundle.json as stored in a bundle, read with plain `zstd -dc | tar -xO` (not airlock).
pub fn read_bundle_json(bundle: &Path) -> Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO bundle.json",
            bundle.display()
        ))
        .output()
        .expect("run zstd | tar");
    assert!(
        out.status.success(),
        "zstd | tar failed: {}",
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).expect("bundle.json is JSON")
}

/// The published JSON Schema of bundle.json (`bundle-schema/bundle.schema.json`), compiled.
pub fn bundle_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bundle-schema/bundle.schema.json"
        ))
        .expect("read schema"),
    )
    .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Asserts that a bundle.json matches the published schema, listing every violation.
pub fn assert_bundle_schema(bj: &Value) {
    let errors: Vec<String> = bundle_schema()
        .iter_errors(bj)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "bundle.json violates the schema: {errors:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Editing a bundle's seek table (hostile bundles)
// ---------------------------------------------------------------------------------------------

/// The seek table at the end of a file: (entries (c_size, d_size), table length in bytes).
pub fn read_seek_table(bytes: &[u8]) -> (Vec<(u32, u32)>, usize) {
    let n = bytes.len();
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    assert_eq!(u32_at(n - 4), 0x8F92_EAB1, "seekable magic");
    let frames = u32_at(n - 9) as usize;
    let per = if bytes[n - 5] & 0x80 != 0 { 12 } else { 8 };
    let len = 8 + frames * per + 9;
    let start = n - len;
    assert_eq!(u32_at(start), 0x184D_2A5E, "skippable frame magic");
    let entries = (0..frames)
        .map(|i| {
            let at = start + 8 + i * per;
            (u32_at(at), u32_at(at + 4))
        })
        .collect();
    (entries, len)
}

/// Rewrites the seek table at the end of `path` after `edit` changed its entries.
pub fn edit_seek_table(path: &Path, edit: impl FnOnce(&mut Vec<(u32, u32)>)) {
    let mut bytes = fs::read(path).expect("read bundle");
    let (mut entries, len) = read_seek_table(&bytes);
    bytes.truncate(bytes.len() - len);
    edit(&mut entries);
    bytes.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    bytes.extend_from_slice(&((entries.len() * 8 + 9) as u32).to_le_bytes());
    for (c, d) in &entries {
        bytes.extend_from_slice(&c.to_le_bytes());
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    fs::write(path, bytes).expect("write bundle");
}

/// Puts `extra` compressed bytes at the end of frame `k` of the bundle at `path`, counted in
/// that frame's compressed size: a frame that hides more than its seek table says.
pub fn splice_into_frame(path: &Path, k: usize, extra: &[u8]) {
    let mut bytes = fs::read(path).expect("read bundle");
    let (entries, _) = read_seek_table(&bytes);
    let at: usize = entries[..=k].iter().map(|(c, _)| *c as usize).sum();
    bytes.splice(at..at, extra.iter().copied());
    fs::write(path, bytes).expect("write bundle");
    edit_seek_table(path, |e| e[k].0 += extra.len() as u32);
}

// ---------------------------------------------------------------------------------------------
// Crafting archives
// ---------------------------------------------------------------------------------------------

/// A tar member: its raw 512-byte header and its data (written as is, padded to 512).
#[derive(Clone)]
pub struct Member {
    pub header: tar::Header,
    pub data: Vec<u8>,
}

impl Member {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.header.path_bytes()).into_owned()
    }

    /// Header, data and padding, as they sit in the tar stream.
    pub fn tar_bytes(&self) -> Vec<u8> {
        let mut v = self.header.as_bytes().to_vec();
        v.extend_from_slice(&self.data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// Sets the name field byte for byte (tar::Header::set_path refuses `..`).
    pub fn set_raw_name(&mut self, name: &str) {
        let old = self.header.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(u) = self.header.as_ustar_mut() {
            u.prefix = [0; 155];
        }
        self.header.set_cksum();
    }

    pub fn set_raw_link(&mut self, target: &str) {
        let old = self.header.as_old_mut();
        old.linkname = [0; 100];
        old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.header.set_cksum();
    }

    pub fn regular(name: &str, data: Vec<u8>) -> Member {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let mut m = Member { header, data };
        m.set_raw_name(name);
        m
    }
}

/// Reads every member of a (single-file) bundle, extension headers included, in order.
pub fn read_members(bundle: &Path) -> Vec<Member> {
    let f = fs::File::open(bundle).expect("open bundle");
    let dec = zstd::stream::read::Decoder::new(f).expect("zstd decoder");
    let mut archive = tar::Archive::new(dec);
    let mut out = Vec::new();
    for e in archive.entries().expect("entries").raw(true) {
        let mut e = e.expect("entry");
        let header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("member data");
        out.push(Member { header, data });
    }
    out
}

/// Writes `frames` as a seekable zstd file: each reader compressed into its own frame(s), then
/// the seek table. Returns, per reader, the range of seek-table frames it produced.
pub fn write_frames(path: &Path, frames: Vec<Box<dyn Read>>) -> Vec<std::ops::Range<usize>> {
    let f = fs::File::create(path).expect("create crafted bundle");
    let mut enc = zeekstd::EncodeOptions::new()
        .checksum_flag(true)
        .into_encoder(f)
        .expect("zeekstd encoder");
    let mut ranges = Vec::new();
    for mut data in frames {
        let first = enc.seek_table().num_frames() as usize;
        std::io::copy(&mut data, &mut enc).expect("compress");
        enc.end_frame().expect("end frame");
        ranges.push(first..enc.seek_table().num_frames() as usize);
    }
    enc.finish().expect("write seek table");
    ranges
}

pub fn in_frame(bytes: Vec<u8>) -> Box<dyn Read> {
    Box::new(std::io::Cursor::new(bytes))
}

/// Writes members one frame each, then the end-of-archive blocks, like airlock does.
pub fn write_bundle(path: &Path, members: &[Member]) {
    let mut frames: Vec<Box<dyn Read>> = members.iter().map(|m| in_frame(m.tar_bytes())).collect();
    frames.push(in_frame(vec![0; 1024]));
    write_frames(path, frames);
}
