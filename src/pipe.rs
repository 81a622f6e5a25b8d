//! Bytes handed from one thread to a reader on another over a small bounded channel, the
//! buffers going back to be filled again: verify's volume reader and the signer that export
//! feeds `bundle.json` to as it is written out.

use std::io::{self, Read, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// The reading end: reads the buffers in the order they were sent, hands each back once
/// read, and ends when the sending end is gone (or fails with the error sent).
pub struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Where read buffers go back to the sending end.
    back: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    /// Reads what arrives on `rx`, handing read buffers back on `back`.
    pub fn new(rx: Receiver<io::Result<Vec<u8>>>, back: Sender<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            back,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    let used = std::mem::replace(&mut self.current, b);
                    if used.capacity() > 0 {
                        let _ = self.back.send(used);
                    }
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

/// A writer whose bytes a [`ChannelReader`] on another thread reads, as through a pipe
/// (without the file descriptors, and the Rust 1.87, of `io::pipe`): pieces of at most
/// `piece` bytes, at most `depth` of them waiting; the reader sees the end once the writer
/// is dropped.
pub fn pipe(depth: usize, piece: usize) -> (ChannelWriter, ChannelReader) {
    let (tx, rx) = sync_channel(depth);
    let (back, free) = channel();
    (
        ChannelWriter {
            tx,
            free,
            piece: piece.max(1),
        },
        ChannelReader::new(rx, back),
    )
}

/// The writing end of [`pipe`].
pub struct ChannelWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    piece: usize,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.piece);
        let mut b = self.free.try_recv().unwrap_or_default();
        b.clear();
        b.extend_from_slice(&buf[..n]);
        self.tx
            .send(Ok(b))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reading end is gone"))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_passes_every_byte_in_order_then_ends() {
        let bytes: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = pipe(2, 64 << 10);
        let got = std::thread::scope(|scope| {
            let reading = scope.spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).map(|_| got)
            });
            // Odd sizes, one larger than a piece.
            for part in bytes.chunks(70_001) {
                w.write_all(part).unwrap();
            }
            drop(w);
            reading.join().unwrap().unwrap()
        });
        assert_eq!(got, bytes);
        let (mut w, r) = pipe(1, 64 << 10);
        drop(r);
        let e = w.write_all(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
