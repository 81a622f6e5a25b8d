//! The images an export writes, set aside as they are assembled (each as its `bundle.json`
//! entry, in the process's stash: see [`crate::spill`]) and read back one at a time by each
//! pass that writes them out: `bundle.json`, `index.json`, `manifest.json`. Held whole, the
//! images of 33,340 images were 15 MiB, the largest thing an export held while it wrote those
//! members.

use crate::bundle::model::ImageEntry;
use crate::error::{Error, Result};
use crate::spill::Kept;
use std::sync::Arc;

/// Where the assembled images go: set aside ([`Images`], export) or held (`copy`, whose engine
/// walks them as it pushes).
pub trait Collect {
    fn add(&mut self, image: ImageEntry) -> Result<()>;
}

impl Collect for Vec<Arc<ImageEntry>> {
    fn add(&mut self, image: ImageEntry) -> Result<()> {
        self.push(Arc::new(image));
        Ok(())
    }
}

/// The images of an export, in order, each kept as its JSON.
#[derive(Default)]
pub struct Images {
    kept: Vec<Kept>,
}

impl Collect for Images {
    fn add(&mut self, image: ImageEntry) -> Result<()> {
        let bytes = serde_json::to_vec(&image)
            .map_err(|e| Error::Failed(format!("image {}: {e}", image.source)))?;
        self.kept.push(Kept::new(bytes));
        Ok(())
    }
}

impl Images {
    pub fn with_capacity(n: usize) -> Images {
        Images {
            kept: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Image `n`, read back.
    pub fn get(&self, n: usize) -> Result<ImageEntry> {
        let kept = self
            .kept
            .get(n)
            .ok_or_else(|| Error::Failed(format!("the export has no image {n}")))?;
        let bytes = kept
            .bytes()
            .map_err(|e| Error::io(format!("reading back image {n} of the export"), e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Failed(format!("reading back image {n} of the export: {e}")))
    }

    /// Every image in order, each read back as it is reached.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<ImageEntry>> + '_ {
        (0..self.kept.len()).map(|n| self.get(n))
    }

    /// Every image read back and held: for what walks them all at once (`--plan`).
    pub fn held(&self) -> Result<Vec<Arc<ImageEntry>>> {
        self.iter().map(|i| i.map(Arc::new)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn images_come_back_as_they_were_set_aside() {
        let image = |tag: &str, subject: Option<Digest>| ImageEntry {
            source: format!("reg.test/lib/app:{tag}").into(),
            registry: "reg.test".into(),
            namespace: "lib".into(),
            path: "app".into(),
            tag: tag.into(),
            digest: Digest::of(tag.as_bytes()),
            source_digest: Some(Box::new(Digest::of(b"source"))),
            subject: subject.map(Box::new),
            media_type: crate::manifest::OCI_INDEX.into(),
            platforms: vec!["linux/amd64".into(), "linux/arm64/v8".into()].into(),
            size: 42,
            blobs: vec![Digest::of(b"layer"), Digest::of(tag.as_bytes())].into(),
        };
        let given = [image("1.0", None), image("latest", Some(Digest::of(b"s")))];
        let mut images = Images::with_capacity(2);
        for i in &given {
            images.add(i.clone()).unwrap();
        }
        assert_eq!(images.len(), 2);
        let back: Vec<ImageEntry> = images.iter().map(|i| i.unwrap()).collect();
        for (a, b) in given.iter().zip(&back) {
            assert_eq!(
                serde_json::to_string_pretty(a).unwrap(),
                serde_json::to_string_pretty(b).unwrap()
            );
        }
        assert!(images.get(2).is_err());
    }
}
