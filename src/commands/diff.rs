//! `airlock diff OLD NEW`: what changed between two bundles (or their `bundle.json` files):
//! images added, removed and retagged (same name, new digest), and the bytes NEW carries that
//! OLD did not.

use crate::bundle::{read_manifest, BundleManifest};
use crate::cli::DiffArgs;
use crate::digest::Digest;
use crate::error::Result;
use crate::progress::human;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Digest>,
}

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub retagged: Vec<Change>,
    pub unchanged: usize,
    /// Objects NEW's images use that OLD neither carried nor relied on.
    pub new_blobs: usize,
    pub new_bytes: u64,
}

/// Image name → root digest.
fn images(m: &BundleManifest) -> BTreeMap<String, Digest> {
    m.images
        .iter()
        .map(|i| (i.source.to_string(), i.digest.clone()))
        .collect()
}

pub fn compare(old: &BundleManifest, new: &BundleManifest) -> Diff {
    let (a, b) = (images(old), images(new));
    let mut d = Diff::default();
    for (name, digest) in &b {
        match a.get(name) {
            None => d.added.push(Change {
                name: name.clone(),
                old: None,
                new: Some(digest.clone()),
            }),
            Some(o) if o != digest => d.retagged.push(Change {
                name: name.clone(),
                old: Some(o.clone()),
                new: Some(digest.clone()),
            }),
            Some(_) => d.unchanged += 1,
        }
    }
    for (name, digest) in &a {
        if !b.contains_key(name) {
            d.removed.push(Change {
                name: name.clone(),
                old: Some(digest.clone()),
                new: None,
            });
        }
    }
    let known: HashSet<&Digest> = old
        .blobs
        .iter()
        .map(|x| &x.digest)
        .chain(old.external.iter().map(|x| &x.digest))
        .collect();
    let mut counted = HashSet::new();
    for x in &new.blobs {
        if !known.contains(&x.digest) && counted.insert(&x.digest) {
            d.new_blobs += 1;
            d.new_bytes += x.size;
        }
    }
    d
}

pub fn run(args: DiffArgs) -> Result<()> {
    let (_, old) = read_manifest(&args.old)?;
    let (_, new) = read_manifest(&args.new)?;
    let d = compare(&old, &new);
    if args.json {
        return crate::progress::print_json(&d);
    }
    println!(
        "{} ({}, {}) -> {} ({}, {})",
        args.old.display(),
        old.created,
        crate::units::count(old.images.len() as u64, "image", "images"),
        args.new.display(),
        new.created,
        crate::units::count(new.images.len() as u64, "image", "images")
    );
    for c in &d.added {
        println!(
            "added     {}  {}",
            c.name,
            c.new.as_ref().map(|x| x.short()).unwrap_or_default()
        );
    }
    for c in &d.retagged {
        println!(
            "retagged  {}  {} -> {}",
            c.name,
            c.old.as_ref().map(|x| x.short()).unwrap_or_default(),
            c.new.as_ref().map(|x| x.short()).unwrap_or_default()
        );
    }
    for c in &d.removed {
        println!(
            "removed   {}  {}",
            c.name,
            c.old.as_ref().map(|x| x.short()).unwrap_or_default()
        );
    }
    println!(
        "{} added, {} retagged, {} removed, {} unchanged; {} new in {} ({} objects)",
        d.added.len(),
        d.retagged.len(),
        d.removed.len(),
        d.unchanged,
        human(d.new_bytes),
        args.new.display(),
        d.new_blobs
    );
    Ok(())
}
