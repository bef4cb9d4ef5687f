//! virtio-rng (virtio 1.2, 5.4): fills each buffer the guest offers with
//! bytes from the host's getrandom.

use std::io::Write;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Writer;

use super::{Context, QueueHandler, VirtioDevice};
use crate::error::Result;

const QUEUE_SIZE: u16 = 64;
/// The most entropy handed out per request; Linux asks for far less.
const MAX_REQUEST: usize = 64 << 10;

pub struct Rng;

impl VirtioDevice for Rng {
    fn kind(&self) -> &'static str {
        "VirtioRng"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    /// virtio-rng has no config space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&self, _features: u64) -> Result<Box<dyn QueueHandler>> {
        Ok(Box::new(RngHandler))
    }
}

struct RngHandler;

impl QueueHandler for RngHandler {
    fn queue_notified(&mut self, index: usize, ctx: &mut Context<'_>) -> Result<()> {
        let memory = ctx.memory;
        ctx.serve(index, |chain| {
            let Ok(mut writer) = Writer::new(memory, chain.clone()) else {
                return Some(0);
            };
            let mut entropy = vec![0u8; writer.available_bytes().min(MAX_REQUEST)];
            if getrandom::fill(&mut entropy).is_err() || writer.write_all(&entropy).is_err() {
                return Some(0);
            }
            Some(entropy.len() as u32)
        })
    }
}
