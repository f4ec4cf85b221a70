//! One slot word of the port table: free, held by an owner, or leased.
//!
//! | bits  | held                      | lease                               |
//! |-------|---------------------------|-------------------------------------|
//! | 63-62 | 01                        | 10                                  |
//! | 61-49 | owner record index        | owner record index                  |
//! | 48-32 | 0                         | low 17 bits of the owner generation |
//! | 31-0  | owner record generation   | expiry, in `process::clock_seconds` |
//!
//! A held slot lives exactly as long as its owner record's generation does
//! (see `owners.rs`); a lease until its expiry, whoever made it. The index and
//! generation let the maker return either kind early, and nobody else.

use crate::table_file::RECORDS;

const KIND_SHIFT: u32 = 62;
const HELD: u64 = 1;
const LEASE: u64 = 2;
const OWNER_SHIFT: u32 = 49;
const OWNER_MASK: u64 = 0x1fff;
const TAG_SHIFT: u32 = 32;
pub const TAG_MASK: u32 = 0x1_ffff;

/// A decoded slot word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Free,
    Held {
        owner: u16,
        generation: u32,
    },
    Lease {
        owner: u16,
        tag: u32,
        until: u32,
    },
    /// Not a word this protocol writes (damage, or another program): nobody's.
    Corrupt,
}

/// An owner record as a reservation names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId {
    pub index: u16,
    pub generation: u32,
}

impl OwnerId {
    pub fn held(self) -> u64 {
        (HELD << KIND_SHIFT) | (u64::from(self.index) << OWNER_SHIFT) | u64::from(self.generation)
    }

    pub fn lease(self, until: u32) -> u64 {
        (LEASE << KIND_SHIFT)
            | (u64::from(self.index) << OWNER_SHIFT)
            | (u64::from(self.generation & TAG_MASK) << TAG_SHIFT)
            | u64::from(until)
    }

    /// True if `slot` is a reservation this owner made (held or leased).
    pub fn made(self, slot: Slot) -> bool {
        match slot {
            Slot::Held { owner, generation } => {
                owner == self.index && generation == self.generation
            }
            Slot::Lease { owner, tag, .. } => {
                owner == self.index && tag == self.generation & TAG_MASK
            }
            Slot::Free | Slot::Corrupt => false,
        }
    }
}

impl Slot {
    pub fn decode(word: u64) -> Slot {
        if word == 0 {
            return Slot::Free;
        }
        let owner = ((word >> OWNER_SHIFT) & OWNER_MASK) as u16;
        if usize::from(owner) >= RECORDS {
            return Slot::Corrupt;
        }
        let low = (word & 0xffff_ffff) as u32;
        let middle = ((word >> TAG_SHIFT) & u64::from(TAG_MASK)) as u32;
        match word >> KIND_SHIFT {
            HELD if middle == 0 && low != 0 => Slot::Held {
                owner,
                generation: low,
            },
            LEASE => Slot::Lease {
                owner,
                tag: middle,
                until: low,
            },
            _ => Slot::Corrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_are_never_zero() {
        let id = OwnerId {
            index: 4_095,
            generation: 0xdead_beef,
        };
        assert_eq!(
            Slot::decode(id.held()),
            Slot::Held {
                owner: 4_095,
                generation: 0xdead_beef
            }
        );
        let lease = Slot::decode(id.lease(123));
        assert_eq!(
            lease,
            Slot::Lease {
                owner: 4_095,
                tag: 0xdead_beef & TAG_MASK,
                until: 123
            }
        );
        assert!(id.made(lease) && id.made(Slot::decode(id.held())));
        let other = OwnerId {
            index: 4_095,
            generation: 0xdead_bef0,
        };
        assert!(!other.made(Slot::decode(id.held())));
        assert_ne!(
            OwnerId {
                index: 0,
                generation: 1
            }
            .held(),
            0
        );
    }

    #[test]
    fn foreign_words_are_corrupt() {
        assert_eq!(Slot::decode(u64::MAX), Slot::Corrupt);
        assert_eq!(
            Slot::decode(u64::from_le_bytes(*b"KCPORTS1")),
            Slot::Corrupt
        );
        assert_eq!(
            Slot::decode(1 << 62),
            Slot::Corrupt,
            "held needs a generation"
        );
    }
}
