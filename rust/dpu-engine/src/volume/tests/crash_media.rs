//! A media that records every write and flush, to rebuild what a crash at
//! any point could have left on the device.

use std::sync::Mutex;

use crate::fault::{sector_pieces, torn_sectors};
use crate::media::{check_range, Media, MediaError, MediaResult};

/// One recorded media operation.
#[derive(Clone)]
pub(crate) enum Event {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

/// How a crash treats writes that no flush has made durable.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loss {
    /// All of them are lost.
    All,
    /// None of them is lost (the crash came right after them).
    None,
    /// Any set of them survives, each whole or torn into any subset of its
    /// 512-byte sectors (the sectors that survive land in write order).
    Random(u64),
}

struct State {
    current: Vec<u8>,
    log: Vec<Event>,
}

/// In-memory media with an event log.
pub(crate) struct CrashMedia {
    state: Mutex<State>,
}

impl CrashMedia {
    pub(crate) fn new(size: usize) -> Self {
        CrashMedia {
            state: Mutex::new(State {
                current: vec![0; size],
                log: Vec::new(),
            }),
        }
    }

    /// Media whose content is `image`, with an empty log.
    pub(crate) fn from_image(image: Vec<u8>) -> Self {
        CrashMedia {
            state: Mutex::new(State {
                current: image,
                log: Vec::new(),
            }),
        }
    }

    pub(crate) fn grow(&self, size: usize) {
        let mut state = self.state.lock().unwrap();
        state.current.resize(size, 0);
    }

    /// Number of events so far: a crash point.
    pub(crate) fn events(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }

    pub(crate) fn image(&self) -> Vec<u8> {
        self.state.lock().unwrap().current.clone()
    }

    pub(crate) fn log(&self) -> Vec<Event> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forgets the log; `base` of later [`crash_image`] calls is the
    /// current content.
    pub(crate) fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

/// What the device holds after a crash once `events` of `log` (recorded
/// over a device that held `base`) have been issued.
pub(crate) fn crash_image(base: &[u8], log: &[Event], events: usize, loss: Loss) -> Vec<u8> {
    let mut image = base.to_vec();
    let mut pending: Vec<(u64, &[u8])> = Vec::new();
    let apply = |image: &mut Vec<u8>, offset: u64, data: &[u8]| {
        let start = offset as usize;
        let end = (start + data.len()).min(image.len());
        image[start..end].copy_from_slice(&data[..end - start]);
    };
    for event in &log[..events] {
        match event {
            Event::Write { offset, data } => pending.push((*offset, data)),
            Event::Flush => {
                for (offset, data) in pending.drain(..) {
                    apply(&mut image, offset, data);
                }
            }
        }
    }
    match loss {
        Loss::All => {}
        Loss::None => {
            for (offset, data) in pending {
                apply(&mut image, offset, data);
            }
        }
        Loss::Random(seed) => {
            let mut keep = torn_sectors(seed);
            for (offset, data) in pending {
                let pieces = sector_pieces(offset, data.len());
                let kept = keep(&pieces);
                for (range, _) in pieces.iter().zip(&kept).filter(|(_, k)| **k) {
                    let at = (range.start - offset) as usize..(range.end - offset) as usize;
                    apply(&mut image, range.start, &data[at]);
                }
            }
        }
    }
    image
}

impl Media for CrashMedia {
    fn size(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.current.len() as u64)
            .unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        let state = self.state.lock().map_err(|_| MediaError::Gone)?;
        check_range(offset, buf.len() as u64, state.current.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&state.current[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        let mut state = self.state.lock().map_err(|_| MediaError::Gone)?;
        check_range(offset, data.len() as u64, state.current.len() as u64)?;
        let start = offset as usize;
        state.current[start..start + data.len()].copy_from_slice(data);
        state.log.push(Event::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn flush(&self) -> MediaResult<()> {
        let mut state = self.state.lock().map_err(|_| MediaError::Gone)?;
        state.log.push(Event::Flush);
        Ok(())
    }
}
