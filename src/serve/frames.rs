//! Reading ranges of blobs straight from the compressed bundles: only the zstd frames a range
//! needs are decoded, each whole and checked against its own checksum before a byte of it is
//! served, and kept in one small cache shared by every client (bounded in bytes, least
//! recently used out first; a frame larger than the whole budget is kept alone; a frame the
//! cache let go of while a response still holds it is taken again, not decoded again). No
//! blob is ever held whole. A response hands its connection copies of at most 256 KiB, so a
//! client that reads slowly or not at all holds a piece and its connection's buffer, never a
//! frame, and never a turn that others wait for; responses that read quickly keep their
//! frame between pieces while one of a few pins is free.

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// Decoded frames, keyed by (bundle, frame), with a byte budget; the frames being fetched and
/// those held by responses between pieces are bounded apart.
pub struct FrameCache {
    inner: Mutex<Lru>,
    budget: usize,
    /// Frames fetched (from the cache, or decoded) at once: held only while a piece is cut.
    fetches: Arc<tokio::sync::Semaphore>,
    /// Frames kept by responses between pieces, taken only when free, never waited for.
    pins: Arc<tokio::sync::Semaphore>,
    /// Frames being decoded: a client that wants one waits for that decode instead of
    /// starting its own (clients pulling the same image ask for the same frames at once).
    decoding: Mutex<HashMap<(usize, u32), Arc<Decoding>>>,
}

/// One decode under way, and its outcome once done.
#[derive(Default)]
struct Decoding {
    outcome: Mutex<Option<std::result::Result<Bytes, String>>>,
    done: Condvar,
}

/// Frames fetched at once, beyond the cache (each one frame of the writer's: 4 MiB, or
/// 16 MiB in bundles of earlier versions).
pub const FETCHES: usize = 4;

/// Frames kept between pieces by responses that read quickly, beyond the cache.
pub const PINS: usize = 4;

/// The most a response is handed at once, copied out of its frame: what a client that stops
/// reading leaves in its connection's buffers is pieces, never a frame.
const PIECE: u64 = 256 << 10;

/// A reader that takes longer than this to ask for its next piece keeps no frame for it.
const SLOW: std::time::Duration = std::time::Duration::from_millis(50);

/// A decoded frame, shared by the cache and the responses sending pieces of it.
struct Frame(Arc<Vec<u8>>);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Default)]
struct Lru {
    frames: HashMap<(usize, u32), (Bytes, u64)>,
    bytes: usize,
    clock: u64,
    /// Every frame decoded, as long as something holds it: a frame the cache let go of but a
    /// response still sends is taken again instead of decoded again (it takes no more
    /// memory). Entries whose frame is gone are swept as the map grows.
    alive: HashMap<(usize, u32), std::sync::Weak<Vec<u8>>>,
}

impl Lru {
    /// Keeps `bytes` under `key` within `budget`, least recently used out first; a frame
    /// larger than the whole budget (16 MiB frames of earlier versions' bundles against a
    /// small cache) is kept alone rather than not at all. A budget of 0 keeps nothing.
    fn keep(&mut self, budget: usize, key: (usize, u32), bytes: &Bytes) {
        if budget == 0 {
            return;
        }
        while self.bytes + bytes.len() > budget && !self.frames.is_empty() {
            let Some((&oldest, _)) = self.frames.iter().min_by_key(|(_, (_, used))| *used) else {
                break;
            };
            if let Some((gone, _)) = self.frames.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
        self.clock += 1;
        let now = self.clock;
        self.bytes += bytes.len();
        if let Some((old, _)) = self.frames.insert(key, (bytes.clone(), now)) {
            self.bytes -= old.len();
        }
    }
}

impl FrameCache {
    pub fn new(budget: usize) -> FrameCache {
        FrameCache {
            inner: Mutex::new(Lru::default()),
            budget,
            fetches: Arc::new(tokio::sync::Semaphore::new(FETCHES)),
            pins: Arc::new(tokio::sync::Semaphore::new(PINS)),
            decoding: Mutex::default(),
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
        self.get_or_decode((bi, i), &b.path, || b.decode_frame(i))
    }

    /// The frame under `key` if the cache has it or something still holds it; never blocks
    /// for long (one lock, no decode).
    fn cached(&self, key: (usize, u32)) -> Option<Bytes> {
        let mut l = self.lock();
        l.clock += 1;
        let now = l.clock;
        if let Some((bytes, used)) = l.frames.get_mut(&key) {
            *used = now;
            return Some(bytes.clone());
        }
        let frame = l.alive.get(&key).and_then(std::sync::Weak::upgrade)?;
        let bytes = Bytes::from_owner(Frame(frame));
        l.keep(self.budget, key, &bytes);
        Some(bytes)
    }

    /// The frame under `key`: from the cache, from a decode under way, or decoded here.
    fn get_or_decode(
        &self,
        key: (usize, u32),
        path: &std::path::Path,
        decode: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Bytes> {
        let (bi, i) = key;
        if let Some(bytes) = self.cached(key) {
            return Ok(bytes);
        }
        // One decode per frame at a time: join one under way, or start it.
        let (job, mine) = {
            let mut d = match self.decoding.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match d.get(&(bi, i)) {
                Some(job) => (job.clone(), false),
                None => {
                    let job = Arc::new(Decoding::default());
                    d.insert((bi, i), job.clone());
                    (job, true)
                }
            }
        };
        if !mine {
            let mut outcome = match job.outcome.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            while outcome.is_none() {
                outcome = match job.done.wait(outcome) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            return match outcome.as_ref() {
                Some(Ok(bytes)) => Ok(bytes.clone()),
                Some(Err(e)) => Err(Error::bundle(path, e.clone())),
                None => Err(Error::bundle(path, "a frame decode was lost")),
            };
        }
        // Whatever happens, the waiters get an outcome and the job is gone.
        struct Finish<'a> {
            cache: &'a FrameCache,
            key: (usize, u32),
            job: Arc<Decoding>,
            outcome: Option<std::result::Result<Bytes, String>>,
        }
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let outcome = self
                    .outcome
                    .take()
                    .unwrap_or_else(|| Err("the frame decode stopped".into()));
                match self.job.outcome.lock() {
                    Ok(mut g) => *g = Some(outcome),
                    Err(poisoned) => *poisoned.into_inner() = Some(outcome),
                }
                self.job.done.notify_all();
                match self.cache.decoding.lock() {
                    Ok(mut d) => d.remove(&self.key),
                    Err(poisoned) => poisoned.into_inner().remove(&self.key),
                };
            }
        }
        let mut finish = Finish {
            cache: self,
            key: (bi, i),
            job,
            outcome: None,
        };
        let decoded = decode().map(Arc::new);
        let frame = match decoded {
            Ok(frame) => frame,
            Err(e) => {
                finish.outcome = Some(Err(e.to_string()));
                return Err(e);
            }
        };
        let weak = Arc::downgrade(&frame);
        let bytes = Bytes::from_owner(Frame(frame));
        {
            let mut l = self.lock();
            l.keep(self.budget, key, &bytes);
            if l.alive.len() >= 2 * l.frames.len() + 64 {
                l.alive.retain(|_, w| w.strong_count() > 0);
            }
            l.alive.insert(key, weak);
        }
        finish.outcome = Some(Ok(bytes.clone()));
        Ok(bytes)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.lock().bytes
    }
}

/// A frame a response keeps between pieces, with its pin.
struct Held {
    frame: Bytes,
    /// Its place in the archive: `[start, end)`.
    start: u64,
    end: u64,
    _pin: tokio::sync::OwnedSemaphorePermit,
}

/// Where a response is: the next byte it sends, the frame it keeps, and when it was last
/// handed a piece.
struct Reading {
    pos: u64,
    held: Option<Held>,
    handed: Option<std::time::Instant>,
}

/// Reads `[from, to)` of a blob whose content starts at archive offset `base`, as a stream
/// of verified pieces of at most [`PIECE`] bytes, each a copy: a client that stops reading
/// holds no frame and no turn of anyone else's. A response that asks for its next piece
/// quickly keeps its frame meanwhile if one of the [`PINS`] is free; the others find their
/// frame in the cache, or held by another response, or decode it again. Fetching and
/// decoding run on blocking threads, [`FETCHES`] at a time.
pub fn range_stream(
    cache: Arc<FrameCache>,
    bi: usize,
    bundle: Arc<Bundle>,
    base: u64,
    from: u64,
    to: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes>> {
    use futures_util::StreamExt;
    let start = Reading {
        pos: from,
        held: None,
        handed: None,
    };
    futures_util::stream::unfold(Some(start), move |reading| {
        let cache = cache.clone();
        let bundle = bundle.clone();
        async move {
            let mut r = reading?;
            if r.pos >= to {
                return None;
            }
            let quick = r.handed.is_none_or(|t| t.elapsed() < SLOW);
            let at = base + r.pos;
            if !quick || r.held.as_ref().is_some_and(|h| at < h.start || at >= h.end) {
                r.held = None;
            }
            let (frame, start, end) = match &r.held {
                Some(h) => (h.frame.clone(), h.start, h.end),
                None => match fetch(&cache, bi, &bundle, at).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e), None)),
                },
            };
            let lo = (at - start) as usize;
            let hi = ((base + to).min(end).min(at + PIECE) - start) as usize;
            if lo >= hi {
                return Some((Err(Error::Failed("an empty frame".into())), None));
            }
            let piece = Bytes::copy_from_slice(&frame[lo..hi]);
            r.pos += piece.len() as u64;
            let more_here = base + r.pos < end && r.pos < to;
            if !(quick && more_here) {
                r.held = None;
            } else if r.held.is_none() {
                if let Ok(pin) = cache.pins.clone().try_acquire_owned() {
                    r.held = Some(Held {
                        frame,
                        start,
                        end,
                        _pin: pin,
                    });
                }
            }
            r.handed = Some(std::time::Instant::now());
            Some((Ok(piece), Some(r)))
        }
    })
    .boxed()
}

/// The frame holding archive offset `at`, and its place `[start, end)`: from the cache, or
/// else on a blocking thread, [`FETCHES`] at a time (joining a decode under way, or decoding).
async fn fetch(
    cache: &Arc<FrameCache>,
    bi: usize,
    bundle: &Arc<Bundle>,
    at: u64,
) -> Result<(Bytes, u64, u64)> {
    let (i, start, end) = bundle.frame_at(at)?;
    let frame = match cache.cached((bi, i)) {
        Some(frame) => frame,
        None => {
            let _turn = cache
                .fetches
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Failed("the server is stopping".into()))?;
            let (cache, bundle) = (cache.clone(), bundle.clone());
            tokio::task::spawn_blocking(move || cache.frame(bi, &bundle, i))
                .await
                .map_err(|e| Error::Failed(format!("reading a frame: {e}")))??
        }
    };
    if frame.len() as u64 != end - start {
        return Err(Error::bundle(
            &bundle.path,
            format!("frame {i} has the wrong size"),
        ));
    }
    Ok((frame, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::Path;

    /// Gets `key` from `cache`, counting the decodes it took.
    fn get(cache: &FrameCache, key: u32, len: usize, decodes: &Cell<u32>) -> Bytes {
        cache
            .get_or_decode((0, key), Path::new("b.tar.zst"), || {
                decodes.set(decodes.get() + 1);
                Ok(vec![key as u8; len])
            })
            .unwrap()
    }

    #[test]
    fn frames_are_kept_within_the_budget_least_recently_used_out_first() {
        let (cache, decodes) = (FrameCache::new(10), Cell::new(0));
        get(&cache, 1, 4, &decodes);
        get(&cache, 2, 4, &decodes);
        get(&cache, 1, 4, &decodes); // 1 is now the most recently used
        assert_eq!((decodes.get(), cache.held()), (2, 8));
        get(&cache, 3, 4, &decodes); // 2 goes
        assert_eq!((decodes.get(), cache.held()), (3, 8));
        assert_eq!(get(&cache, 1, 4, &decodes), vec![1u8; 4]);
        assert_eq!(decodes.get(), 3);
        get(&cache, 2, 4, &decodes);
        assert_eq!(decodes.get(), 4);
    }

    #[test]
    fn a_frame_larger_than_the_budget_is_kept_alone() {
        let (cache, decodes) = (FrameCache::new(10), Cell::new(0));
        get(&cache, 1, 4, &decodes);
        get(&cache, 2, 16, &decodes);
        assert_eq!(cache.held(), 16);
        get(&cache, 2, 16, &decodes);
        assert_eq!(decodes.get(), 2);
        get(&cache, 1, 4, &decodes); // decoded again; the large one makes room
        assert_eq!((decodes.get(), cache.held()), (3, 4));
    }

    #[test]
    fn no_budget_keeps_nothing() {
        let (cache, decodes) = (FrameCache::new(0), Cell::new(0));
        get(&cache, 1, 4, &decodes);
        get(&cache, 1, 4, &decodes);
        assert_eq!((decodes.get(), cache.held()), (2, 0));
    }

    #[test]
    fn a_frame_a_response_still_holds_is_taken_again_not_decoded_again() {
        // A cache of one frame.
        let (cache, decodes) = (FrameCache::new(4), Cell::new(0));
        let sending = get(&cache, 1, 4, &decodes).slice(1..3);
        get(&cache, 2, 4, &decodes); // frame 1 leaves the cache; the response still holds it
        assert_eq!(get(&cache, 1, 4, &decodes), vec![1u8; 4]);
        assert_eq!((decodes.get(), cache.held()), (2, 4));
        drop(sending);
        get(&cache, 1, 4, &decodes); // back in the cache
        assert_eq!(decodes.get(), 2);
        get(&cache, 2, 4, &decodes); // held by nothing: decoded again
        assert_eq!(decodes.get(), 3);

        // No cache: only what a response holds.
        let (cache, decodes) = (FrameCache::new(0), Cell::new(0));
        let sending = get(&cache, 1, 4, &decodes).slice(1..3);
        get(&cache, 1, 4, &decodes);
        assert_eq!((decodes.get(), cache.held()), (1, 0));
        drop(sending);
        get(&cache, 1, 4, &decodes);
        assert_eq!(decodes.get(), 2);
    }

    #[test]
    fn a_failed_decode_is_reported_with_the_bundle_and_not_kept() {
        let cache = FrameCache::new(10);
        let e = cache
            .get_or_decode((0, 1), Path::new("b.tar.zst"), || {
                Err(Error::bundle(Path::new("b.tar.zst"), "frame 1 is damaged"))
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.tar.zst") && e.contains("frame 1"), "{e}");
        assert_eq!(cache.held(), 0);
    }
}
