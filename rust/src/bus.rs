//! An address bus: non-overlapping ranges, each owned by one device.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::devices::Device;
use crate::error::{Error, Result};

/// Which bus an access travels on; named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    Pio,
    Mmio,
}

impl AddressSpace {
    pub fn name(self) -> &'static str {
        match self {
            AddressSpace::Pio => "PIO",
            AddressSpace::Mmio => "MMIO",
        }
    }
}

struct Slot {
    length: u64,
    device: Arc<dyn Device>,
}

/// Devices keyed by the base of their range.
pub struct Bus {
    space: AddressSpace,
    slots: BTreeMap<u64, Slot>,
}

impl Bus {
    pub fn new(space: AddressSpace) -> Self {
        Bus {
            space,
            slots: BTreeMap::new(),
        }
    }

    /// Claims `[base, base + length)` for `device`, refusing any overlap.
    pub fn insert(&mut self, base: u64, length: u64, device: Arc<dyn Device>) -> Result<()> {
        let space = self.space.name();
        let end = base
            .checked_add(length)
            .filter(|_| length > 0)
            .ok_or_else(|| {
                Error::BusConflict(format!(
                    "{space} range at {base:#x} with length {length:#x} for {} is empty or wraps around",
                    device.name()
                ))
            })?;
        if let Some((held_base, held)) = self.overlapping(base, end) {
            return Err(Error::BusConflict(format!(
                "{space} range {base:#x}-{:#x} for {} overlaps {held_base:#x}-{:#x} held by {}: \
                 pick a free range",
                end - 1,
                device.name(),
                held_base + held.length - 1,
                held.device.name()
            )));
        }
        self.slots.insert(base, Slot { length, device });
        Ok(())
    }

    fn overlapping(&self, base: u64, end: u64) -> Option<(u64, &Slot)> {
        let below = self
            .slots
            .range(..=base)
            .next_back()
            .filter(|(b, s)| *b + s.length > base);
        let above = self.slots.range(base..end).next();
        below.or(above).map(|(b, s)| (*b, s))
    }

    /// The device claiming `address`, with the offset of `address` in its range.
    #[inline]
    pub fn find(&self, address: u64) -> Option<(u64, &Arc<dyn Device>)> {
        let (base, slot) = self.slots.range(..=address).next_back()?;
        let offset = address - base;
        (offset < slot.length).then_some((offset, &slot.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Sink;

    fn bus_with(ranges: &[(u64, u64)]) -> Result<Bus> {
        let mut bus = Bus::new(AddressSpace::Pio);
        for &(base, len) in ranges {
            bus.insert(base, len, Arc::new(Sink))?;
        }
        Ok(bus)
    }

    #[test]
    fn finds_device_and_offset() {
        let bus = bus_with(&[(0x3f8, 8), (0x80, 1)]).unwrap();
        assert_eq!(bus.find(0x3fa).map(|(o, _)| o), Some(2));
        assert_eq!(bus.find(0x80).map(|(o, _)| o), Some(0));
        assert!(bus.find(0x400).is_none());
        assert!(bus.find(0x7f).is_none());
    }

    #[test]
    fn refuses_overlaps_on_either_side() {
        assert!(bus_with(&[(0x10, 0x10), (0x18, 4)]).is_err());
        assert!(bus_with(&[(0x10, 0x10), (0x08, 0x10)]).is_err());
        assert!(bus_with(&[(0x10, 0x10), (0x00, 0x40)]).is_err());
        assert!(bus_with(&[(0x10, 0x10), (0x20, 0x10), (0x00, 0x10)]).is_ok());
    }

    #[test]
    fn refuses_empty_and_wrapping_ranges() {
        assert!(bus_with(&[(0x10, 0)]).is_err());
        assert!(bus_with(&[(u64::MAX, 2)]).is_err());
    }
}
