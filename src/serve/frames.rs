//! Reading ranges of blobs straight from the compressed bundles: only the zstd frames a range
//! needs are decoded, each whole and checked against its own checksum before a byte of it is
//! served, and kept in one small cache shared by every client (bounded in bytes, least
//! recently used out first). No blob is ever held whole.

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Decoded frames, keyed by (bundle, frame), with a byte budget.
pub struct FrameCache {
    inner: Mutex<Lru>,
    budget: usize,
}

#[derive(Default)]
struct Lru {
    frames: HashMap<(usize, u32), (Bytes, u64)>,
    bytes: usize,
    clock: u64,
}

impl FrameCache {
    pub fn new(budget: usize) -> FrameCache {
        FrameCache {
            inner: Mutex::new(Lru::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Frame `i` of bundle `b` (number `bi`), decoded and verified; blocking.
    pub fn frame(&self, bi: usize, b: &Bundle, i: u32) -> Result<Bytes> {
        {
            let mut l = self.lock();
            l.clock += 1;
            let now = l.clock;
            if let Some((bytes, used)) = l.frames.get_mut(&(bi, i)) {
                *used = now;
                return Ok(bytes.clone());
            }
        }
        let bytes = Bytes::from(b.decode_frame(i)?);
        let mut l = self.lock();
        if bytes.len() <= self.budget {
            while l.bytes + bytes.len() > self.budget {
                let Some((&oldest, _)) = l.frames.iter().min_by_key(|(_, (_, used))| *used) else {
                    break;
                };
                if let Some((gone, _)) = l.frames.remove(&oldest) {
                    l.bytes -= gone.len();
                }
            }
            l.clock += 1;
            let now = l.clock;
            l.bytes += bytes.len();
            if let Some((old, _)) = l.frames.insert((bi, i), (bytes.clone(), now)) {
                l.bytes -= old.len();
            }
        }
        Ok(bytes)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.lock().bytes
    }
}

/// Reads `[from, to)` of a blob whose content starts at archive offset `base`, as a stream
/// of verified pieces, one frame at a time. Decoding runs on blocking threads.
pub fn range_stream(
    cache: Arc<FrameCache>,
    bi: usize,
    bundle: Arc<Bundle>,
    base: u64,
    from: u64,
    to: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes>> {
    use futures_util::StreamExt;
    futures_util::stream::unfold(Some(from), move |pos| {
        let cache = cache.clone();
        let bundle = bundle.clone();
        async move {
            let pos = pos?;
            if pos >= to {
                return None;
            }
            let piece = tokio::task::spawn_blocking(move || -> Result<Bytes> {
                let at = base + pos;
                let (i, start, end) = bundle.frame_at(at)?;
                let frame = cache.frame(bi, &bundle, i)?;
                if frame.len() as u64 != end - start {
                    return Err(Error::bundle(
                        &bundle.path,
                        format!("frame {i} has the wrong size"),
                    ));
                }
                let lo = (at - start) as usize;
                let hi = ((base + to).min(end) - start) as usize;
                Ok(frame.slice(lo..hi))
            })
            .await
            .map_err(|e| Error::Failed(format!("reading a frame: {e}")))
            .and_then(|r| r);
            match piece {
                Ok(b) if b.is_empty() => Some((Err(Error::Failed("an empty frame".into())), None)),
                Ok(b) => {
                    let next = pos + b.len() as u64;
                    Some((Ok(b), Some(next)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
    .boxed()
}
