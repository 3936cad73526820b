//! Fuzz target: media whose bytes are hostile (a damaged or forged SSD) must
//! never make the engine panic, neither when a pool or a protected array is
//! opened from it nor when the volumes it claims to hold are read.
#![no_main]

use std::sync::Arc;

use dpu_engine::media::{Media, MemMedia};
use dpu_engine::protection::ProtectedMedia;
use dpu_engine::volume::Pool;
use libfuzzer_sys::fuzz_target;

/// Media of `size` bytes filled with `bytes`, repeated.
fn media_from(bytes: &[u8], size: usize) -> Arc<dyn Media> {
    let media = MemMedia::new(size);
    if !bytes.is_empty() {
        let image: Vec<u8> = bytes.iter().copied().cycle().take(size).collect();
        let _ = media.write_at(0, &image);
    }
    Arc::new(media)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(pool) = Pool::open(media_from(data, 256 << 10)) {
        if let Ok(volumes) = pool.volumes() {
            for info in volumes.iter().filter(|info| !info.encrypted) {
                if let Ok(volume) = pool.open_volume(&info.name, None) {
                    let mut block = vec![0u8; 4096];
                    let _ = volume.read_blocks(0, &mut block);
                }
            }
        }
    }
    // Four members, each a quarter of the input.
    let quarter = data.len() / 4;
    let members = (0..4)
        .map(|i| Some(media_from(&data[i * quarter..(i + 1) * quarter], 128 << 10)))
        .collect();
    if let Ok(array) = ProtectedMedia::open(members) {
        let mut buf = vec![0u8; 4096];
        let _ = array.read_at(0, &mut buf);
    }
});
