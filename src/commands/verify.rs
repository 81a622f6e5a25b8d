//! `airlock verify`: one sequential pass over a bundle, offline. Checks every volume's
//! checksum, every member's name, type, size and digest against `bundle.json`, that every
//! manifest's children are present, that `index.json` agrees with `bundle.json`, that
//! `manifest.json` names only images the bundle carries, and that the seek table matches the
//! archive. `-v` lists each blob as it is checked.

use crate::bundle::docker::{self, MANIFEST_JSON};
use crate::bundle::volumes::{checksum_name, explain_damage, MultiFile};
use crate::bundle::{Bundle, INDEX_JSON};
use crate::cli::VerifyArgs;
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest;
use crate::progress::{human, Reporter};
use crate::registry::MAX_MANIFEST_SIZE;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Hashes the raw bytes of each volume as they stream by.
struct VolumeHasher {
    inner: MultiFile,
    bounds: Vec<(PathBuf, u64)>,
    current: usize,
    in_current: u64,
    hasher: Sha256,
    sums: Vec<(PathBuf, String)>,
}

impl VolumeHasher {
    fn new(inner: MultiFile, volumes: &[PathBuf]) -> VolumeHasher {
        let bounds = volumes
            .iter()
            .map(|v| {
                (
                    v.clone(),
                    std::fs::metadata(v).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        VolumeHasher {
            inner,
            bounds,
            current: 0,
            in_current: 0,
            hasher: Sha256::new(),
            sums: Vec::new(),
        }
    }

    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && self.current < self.bounds.len() {
            let left = self.bounds[self.current].1 - self.in_current;
            let take = (left as usize).min(buf.len());
            self.hasher.update(&buf[..take]);
            self.in_current += take as u64;
            buf = &buf[take..];
            if self.in_current == self.bounds[self.current].1 {
                let h = std::mem::take(&mut self.hasher);
                self.sums.push((
                    self.bounds[self.current].0.clone(),
                    hex::encode(h.finalize()),
                ));
                self.current += 1;
                self.in_current = 0;
            }
        }
    }
}

/// Reads the volumes on a thread of its own, hashing them, and hands the bytes over a small
/// bounded channel; returns the reading end and the thread, which yields the hashes.
fn spawn_volume_reader(
    mut hasher: VolumeHasher,
) -> Result<(
    ChannelReader,
    std::thread::JoinHandle<io::Result<VolumeHasher>>,
)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let handle = std::thread::Builder::new()
        .name("verify-read".into())
        .spawn(move || -> io::Result<VolumeHasher> {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match hasher.read(&mut buf) {
                    Ok(0) => return Ok(hasher),
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            return Ok(hasher);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the reading thread", e))?;
    Ok((
        ChannelReader {
            rx,
            current: Vec::new(),
            pos: 0,
        },
        handle,
    ))
}

/// The receiving end of [`spawn_volume_reader`].
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.current = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Read for VolumeHasher {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }
}

#[derive(serde::Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub bundle: String,
    pub ok: bool,
    pub volumes: Vec<VolumeReport>,
    pub images: usize,
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The trusted key that signed the bundle, when one was given and the signature holds.
    pub signed_by: Option<String>,
    /// Objects the bundle relies on but does not carry (an incremental bundle), with the
    /// base bundle that carries each.
    pub external: Vec<String>,
}

#[derive(serde::Serialize)]
pub struct VolumeReport {
    pub file: String,
    pub sha256: String,
    pub ok: Option<bool>,
}

/// How a member is named in messages: blobs by digest.
fn describe_member(bundle: &Bundle, i: usize) -> String {
    match i
        .checked_sub(bundle.first_blob_member())
        .and_then(|b| bundle.manifest.blobs.get(b))
    {
        Some(b) => format!("blob {}", b.digest),
        None => bundle
            .members
            .get(i)
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    }
}

/// Runs every check; structural failures end the pass, content failures are collected. A
/// structural failure names the volumes that do not match `NAME.sha256`.
pub fn check(bundle: &Bundle, reporter: &Reporter) -> Result<Report> {
    check_pass(bundle, reporter).map_err(|e| explain_damage(e, &bundle.path))
}

fn check_pass(bundle: &Bundle, reporter: &Reporter) -> Result<Report> {
    let mut rep = Report {
        bundle: bundle.path.display().to_string(),
        images: bundle.manifest.images.len(),
        ..Default::default()
    };
    // One thread reads and hashes the raw volumes, this one decompresses and checks members.
    let (raw_reader, hash_thread) =
        spawn_volume_reader(VolumeHasher::new(bundle.raw_stream(), &bundle.volumes))?;
    let mut dec = zstd::stream::read::Decoder::new(raw_reader)
        .map_err(|e| Error::bundle(&bundle.path, format!("zstd: {e}")))?;
    let mut manifests: HashMap<Digest, Vec<u8>> = HashMap::new();
    let mut index_json = Vec::new();
    let mut docker_manifest: Option<Vec<u8>> = None;
    let first_blob = bundle.first_blob_member();
    {
        let mut archive = tar::Archive::new(&mut dec);
        // Raw: GNU long names and pax headers are members like any other (and refused as
        // such), never read into memory or applied.
        let entries = archive
            .entries()
            .map_err(|e| Error::bundle(&bundle.path, format!("reading the archive: {e}")))?
            .raw(true);
        let mut i: usize = 0;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                // zstd checks a frame when it ends, which is when the next header is read:
                // the damage is in the member before.
                let damaged = match i.checked_sub(1) {
                    Some(prev) => format!(" (in or after {})", describe_member(bundle, prev)),
                    None => String::new(),
                };
                Error::bundle(
                    &bundle.path,
                    format!("reading member {}{damaged}: {e}", i + 1),
                )
            })?;
            let Some(expected) = bundle.members.get(i) else {
                let name = entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(Error::bundle(
                    &bundle.path,
                    format!("unexpected extra member {name:?}"),
                ));
            };
            let name = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .map_err(|e| {
                    Error::bundle(&bundle.path, format!("member {}: bad name: {e}", i + 1))
                })?;
            if name != expected.name || !entry.header().entry_type().is_file() {
                return Err(Error::bundle(
                    &bundle.path,
                    format!(
                        "member {} is {name:?}, expected the regular file {}",
                        i + 1,
                        expected.name
                    ),
                ));
            }
            if entry.size() != expected.size {
                return Err(Error::bundle(
                    &bundle.path,
                    format!(
                        "member {name} holds {} bytes, bundle.json says {}",
                        entry.size(),
                        expected.size
                    ),
                ));
            }
            let blob = i
                .checked_sub(first_blob)
                .and_then(|b| bundle.manifest.blobs.get(b));
            let (digest, keep) = match blob {
                // A layout member: bundle.json itself, oci-layout, index.json, manifest.json.
                None => (
                    bundle.layout_digest(&expected.name).cloned(),
                    expected.name == INDEX_JSON || expected.name == MANIFEST_JSON,
                ),
                Some(b) => {
                    let keep = manifest::is_manifest(&b.media_type) && b.size <= MAX_MANIFEST_SIZE;
                    (Some(b.digest.clone()), keep)
                }
            };
            let mut verifier = digest.as_ref().map(|d| Verifier::new(d, expected.size));
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| Error::bundle(&bundle.path, format!("reading {name}: {e}")))?;
                if n == 0 {
                    break;
                }
                if let Some(v) = verifier.as_mut() {
                    v.update(&buf[..n])
                        .map_err(|e| Error::bundle(&bundle.path, e.to_string()))?;
                }
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
                reporter.inc(n as u64);
            }
            let verdict = match verifier {
                Some(v) => match v.finish() {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let msg = format!("{name}: {e}");
                        rep.errors.push(msg.clone());
                        Err(msg)
                    }
                },
                None => Ok(()),
            };
            if let Some(b) = blob {
                match &verdict {
                    Ok(()) => reporter.detail(format!(
                        "ok   {} {} {}",
                        b.digest,
                        human(b.size),
                        b.media_type
                    )),
                    Err(msg) => reporter.detail(format!("BAD  {} ({msg})", b.digest)),
                }
            }
            if blob.is_none() && expected.name == INDEX_JSON {
                index_json = kept;
            } else if blob.is_none() && expected.name == MANIFEST_JSON {
                // Damaged bytes are reported by the digest check; only sound ones are read.
                docker_manifest = verdict.is_ok().then_some(kept);
            } else if keep {
                if let Some(d) = digest {
                    manifests.insert(d, kept);
                }
            }
            if blob.is_some() {
                rep.blobs_checked += 1;
                rep.bytes_checked += expected.size;
            }
            i += 1;
        }
        if i < bundle.members.len() {
            return Err(Error::bundle(
                &bundle.path,
                format!(
                    "the archive ends after {i} members; bundle.json lists {} (first missing: {})",
                    bundle.members.len(),
                    bundle.members[i].name
                ),
            ));
        }
    }
    // Drain what follows the tar stream (padding, the seek table) so every volume is hashed;
    // a writer leaves 1 KiB of end-of-archive blocks, so much more is not ours to decompress.
    const TRAILER_LIMIT: u64 = 1 << 20;
    let trailer = io::copy(&mut (&mut dec).take(TRAILER_LIMIT), &mut io::sink())
        .map_err(|e| Error::bundle(&bundle.path, format!("after the archive: {e}")))?;
    if trailer == TRAILER_LIMIT {
        return Err(Error::bundle(
            &bundle.path,
            "more than 1 MiB of data follows the end of the archive",
        ));
    }
    let mut raw = dec.finish();
    io::copy(&mut raw, &mut io::sink())
        .map_err(|e| Error::bundle(&bundle.path, format!("reading the seek table: {e}")))?;
    drop(raw);
    let hasher = match hash_thread.join() {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(Error::bundle(&bundle.path, format!("reading: {e}"))),
        Err(_) => return Err(Error::bundle(&bundle.path, "the reading thread failed")),
    };

    // Volume checksums against the .sha256 file.
    let sums_file = checksum_name(&bundle.path);
    let listed: HashMap<String, String> = std::fs::read_to_string(&sums_file)
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_once("  "))
                .map(|(h, n)| (n.trim().to_string(), h.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    if listed.is_empty() {
        rep.warnings
            .push(format!("no checksum file {}", sums_file.display()));
    }
    for (file, sum) in &hasher.sums {
        let fname = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ok = listed.get(&fname).map(|h| h == sum);
        if ok == Some(false) {
            rep.errors.push(format!(
                "{}: sha256 {sum} does not match {}",
                file.display(),
                sums_file.display()
            ));
        }
        rep.volumes.push(VolumeReport {
            file: file.display().to_string(),
            sha256: sum.clone(),
            ok,
        });
    }

    // Every manifest's children are in the bundle with the declared size.
    // Image configs carried here, with the layer lists that go with them (for manifest.json).
    let mut images: HashMap<String, HashSet<Vec<String>>> = HashMap::new();
    for (d, bytes) in &manifests {
        let Some(b) = bundle.manifest.blob(d) else {
            continue;
        };
        match manifest::children(bytes, &b.media_type, &format!("manifest {d}")) {
            Ok(children) => {
                if manifest::kind(&b.media_type) == Some(manifest::Kind::Image) {
                    let carried = children.iter().all(|c| bundle.holds(&c.digest));
                    if let (true, Some((config, layers))) = (carried, children.split_first()) {
                        images
                            .entry(config.digest.layout_path())
                            .or_default()
                            .insert(layers.iter().map(|l| l.digest.layout_path()).collect());
                    }
                }
                for c in children {
                    match bundle.manifest.blob(&c.digest) {
                        Some(cb) if cb.size == c.size => {}
                        Some(cb) => rep.errors.push(format!(
                            "manifest {d}: child {} is {} bytes in the bundle, {} in the manifest",
                            c.digest, cb.size, c.size
                        )),
                        None => match bundle.manifest.external_blob(&c.digest) {
                            // Declared as carried by a base bundle: accepted as declared.
                            Some(x) if x.size == c.size => {}
                            _ => rep.errors.push(format!(
                                "manifest {d}: child {} is not in the bundle",
                                c.digest
                            )),
                        },
                    }
                }
            }
            Err(e) => rep.errors.push(e.to_string()),
        }
    }

    // index.json names exactly the images of bundle.json.
    match serde_json::from_slice::<serde_json::Value>(&index_json) {
        Ok(v) => {
            let entries = v
                .get("manifests")
                .and_then(|m| m.as_array())
                .cloned()
                .unwrap_or_default();
            if entries.len() != bundle.manifest.images.len() {
                rep.errors.push(format!(
                    "index.json lists {} manifests, bundle.json {} images",
                    entries.len(),
                    bundle.manifest.images.len()
                ));
            }
            for (e, img) in entries.iter().zip(&bundle.manifest.images) {
                let digest = e.get("digest").and_then(|d| d.as_str());
                let name = e
                    .pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(|d| d.as_str());
                if digest != Some(img.digest.as_str()) || name != Some(img.source.as_str()) {
                    rep.errors.push(format!(
                        "index.json disagrees with bundle.json about {}",
                        img.source
                    ));
                }
            }
        }
        Err(e) => rep.errors.push(format!("index.json is not JSON: {e}")),
    }
    // manifest.json names only image configs and layers that are members of this bundle.
    if let Some(bytes) = &docker_manifest {
        rep.errors.extend(docker::check(bytes, &images));
    }
    rep.external = bundle
        .manifest
        .external
        .iter()
        .map(|x| {
            format!(
                "{} ({} bytes) from {}",
                x.digest,
                x.size,
                bundle.manifest.base_of(x)
            )
        })
        .collect();
    rep.ok = rep.errors.is_empty();
    Ok(rep)
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let bundle = Bundle::open(&args.bundle).map_err(|e| explain_damage(e, &args.bundle))?;
    let mut reporter = Reporter::new(args.quiet || args.json, args.verbose);
    let signature = match &args.trusted_key {
        Some(key) => {
            let (id, comment) = crate::signing::verify(&bundle.path, &bundle.bundle_json, key)?;
            reporter.info(format!("signature by trusted key {id} is good ({comment})"));
            Some(id)
        }
        None => None,
    };
    reporter.start_bar(bundle.manifest.total_size, "verifying");
    let mut rep = check(&bundle, &reporter)?;
    reporter.finish_bar();
    rep.signed_by = signature;
    if rep.signed_by.is_none() && crate::signing::signature_path(&bundle.path).exists() {
        rep.warnings
            .push("the bundle is signed, but no --trusted-key was given to check it".into());
    }
    if args.json {
        let mut out = std::io::stdout();
        serde_json::to_writer_pretty(&mut out, &rep).map_err(|e| Error::Failed(e.to_string()))?;
        let _ = writeln!(out);
    } else {
        for w in &rep.warnings {
            reporter.warn(w);
        }
        reporter.info(format!(
            "{}: {} images, {} blobs, {} checked; {} volume(s){}",
            bundle.path.display(),
            rep.images,
            rep.blobs_checked,
            human(rep.bytes_checked),
            rep.volumes.len(),
            if rep.ok { ", all good" } else { "" }
        ));
        if !rep.external.is_empty() {
            reporter.info(format!(
                "{} blobs are not in this bundle but declared as carried by earlier bundles: {}",
                rep.external.len(),
                bundle
                    .manifest
                    .bases
                    .iter()
                    .map(|b| format!("{} (created {})", b.name, b.created))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if rep.ok {
        Ok(())
    } else {
        Err(Error::bundle(
            &bundle.path,
            format!("verification failed:\n  {}", rep.errors.join("\n  ")),
        ))
    }
}
