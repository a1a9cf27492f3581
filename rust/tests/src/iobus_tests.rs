//! I/O bus order, ioeventfd rules and their interplay with coalesced zones.

use crate::iobus::*;

/// A bus built as the kernel builds it: each range inserted where `insert_index` says.
fn bus_of(ranges: &[Range<u32>]) -> Vec<Range<u32>> {
    let mut bus = Vec::new();
    for r in ranges {
        let i = insert_index(&bus, r.addr, r.len);
        bus.insert(i, *r);
    }
    bus
}

fn zone(addr: u64, len: u32) -> Range<u32> {
    Range { addr, len, dev: Dev::Zone }
}

fn ev(addr: u64, len: u32, datamatch: Option<u64>, eventfd: u32) -> Range<u32> {
    Range { addr, len, dev: Dev::Ioeventfd { datamatch, eventfd } }
}

fn args(addr: u64, len: u32, flags: u32, datamatch: u64) -> Args {
    Args { datamatch, addr, len, flags }
}

#[test]
fn assign_checks_in_upstream_order() {
    assert_eq!(args(0x1000, 4, 0, 0).check_assign(), Ok(()));
    for len in [0, 1, 2, 4, 8] {
        assert_eq!(args(0x1000, len, 0, 0).check_assign(), Ok(()), "len {len}");
    }
    for len in [3, 5, 6, 7, 9, 16, u32::MAX] {
        assert_eq!(args(0x1000, len, 0, 0).check_assign(), Err(Error::Invalid), "len {len}");
    }
    assert_eq!(args(u64::MAX - 4, 4, 0, 0).check_assign(), Ok(()));
    assert_eq!(args(u64::MAX - 3, 4, 0, 0).check_assign(), Err(Error::Invalid), "ends at 2^64: wraps to 0");
    assert_eq!(args(u64::MAX, 0, 0, 0).check_assign(), Ok(()));
    assert_eq!(args(0, 4, 1 << 5, 0).check_assign(), Err(Error::Invalid), "unknown flag");
    assert_eq!(args(0, 4, 1 << 4, 0).check_assign(), Ok(()), "the fast-MMIO bit is valid");
    assert_eq!(args(0, 4, FLAG_VIRTIO_CCW_NOTIFY, 0).check_assign(), Ok(()));
    assert_eq!(args(0, 0, FLAG_DATAMATCH, 0).check_assign(), Err(Error::Invalid), "no length, data match");
    assert_eq!(args(0, 0, FLAG_PIO, 0).check_assign(), Ok(()), "PIO with no length");
}

#[test]
fn flags_choose_the_bus() {
    assert_eq!(args(0, 4, 0, 0).bus(), Bus::Mmio);
    assert_eq!(args(0, 4, FLAG_PIO, 0).bus(), Bus::Pio);
    assert_eq!(args(0, 4, FLAG_VIRTIO_CCW_NOTIFY, 0).bus(), Bus::VirtioCcw);
    assert_eq!(args(0, 4, FLAG_VIRTIO_CCW_NOTIFY | FLAG_PIO, 0).bus(), Bus::Pio);
    assert!(args(0, 4, FLAG_DEASSIGN, 0).deassign());
    assert_eq!(args(0, 4, FLAG_DATAMATCH, 7).datamatch(), Some(7));
    assert_eq!(args(0, 4, 0, 7).datamatch(), None);
}

#[test]
fn cmp_is_containment_or_same_address() {
    // r2 with a length: r1 inside r2 compares equal.
    assert_eq!(cmp(0x1004, 4, 0x1000, 16), 0);
    assert_eq!(cmp(0x1000, 16, 0x1000, 16), 0);
    assert_eq!(cmp(0x0fff, 1, 0x1000, 16), -1);
    assert_eq!(cmp(0x100c, 8, 0x1000, 16), 1, "runs past the end");
    // r2 without a length: only the address counts.
    assert_eq!(cmp(0x1000, 8, 0x1000, 0), 0);
    assert_eq!(cmp(0x1001, 1, 0x1000, 0), 1);
    // Upstream's gpa_t arithmetic wraps.
    assert_eq!(cmp(u64::MAX, 2, 0x1000, 16), 0, "a wrapped end compares inside");
}

#[test]
fn ioeventfd_hits() {
    assert!(ioeventfd_hit(0x10, 0, None, 0x10, 8, 0), "no length: any write at the address");
    assert!(ioeventfd_hit(0x10, 0, None, 0x10, 1, 0));
    assert!(!ioeventfd_hit(0x10, 0, None, 0x11, 1, 0), "address must be exact");
    assert!(ioeventfd_hit(0x10, 4, None, 0x10, 4, 123), "wildcard");
    assert!(!ioeventfd_hit(0x10, 4, None, 0x10, 2, 123), "length must be exact");
    assert!(ioeventfd_hit(0x10, 1, Some(0x11), 0x10, 1, 0xffff_ff11), "only the low byte counts");
    assert!(ioeventfd_hit(0x10, 2, Some(0x2222), 0x10, 2, 0x1_2222));
    assert!(ioeventfd_hit(0x10, 4, Some(0x4444_4444), 0x10, 4, 0xffff_ffff_4444_4444));
    assert!(ioeventfd_hit(0x10, 8, Some(u64::MAX), 0x10, 8, u64::MAX));
    assert!(!ioeventfd_hit(0x10, 4, Some(0x4444_4444), 0x10, 4, 0x4444_4445));
    assert!(!ioeventfd_hit(0x10, 3, Some(0), 0x10, 3, 0), "no data match of other sizes");
}

#[test]
fn writes_reach_matching_ioeventfds() {
    let bus = bus_of(&[
        ev(0x10, 1, Some(0x11), 1),
        ev(0x10, 2, Some(0x2222), 2),
        ev(0x20, 4, None, 3),
        ev(0x30, 0, None, 4),
        ev(0x10, 1, Some(0x12), 5),
    ]);
    let w = |addr, len, data| write(&bus, addr, len, data, || panic!("no zone here"));
    assert_eq!(w(0x10, 1, 0x11), Some(Taker::Ioeventfd(1)));
    assert_eq!(w(0x10, 1, 0x12), Some(Taker::Ioeventfd(5)), "the second data match at 0x10");
    assert_eq!(w(0x10, 1, 0x13), None);
    assert_eq!(w(0x10, 2, 0x2222), Some(Taker::Ioeventfd(2)));
    assert_eq!(w(0x10, 4, 0x11), None, "no ioeventfd of that length");
    assert_eq!(w(0x20, 4, 0xdead), Some(Taker::Ioeventfd(3)));
    assert_eq!(w(0x21, 1, 0), None);
    for len in [1, 2, 4, 8] {
        assert_eq!(w(0x30, len, 0), Some(Taker::Ioeventfd(4)), "len {len}");
    }
    assert_eq!(w(0x31, 1, 0), None);
    assert_eq!(w(0x1000, 4, 0), None);
}

#[test]
fn zone_then_ioeventfd_inside_it_the_zone_wins_until_the_ring_is_full() {
    let bus = bus_of(&[zone(0x1000, 0x100), ev(0x1010, 4, None, 7)]);
    assert_eq!(write(&bus, 0x1010, 4, 0, || true), Some(Taker::Zone));
    assert_eq!(write(&bus, 0x1010, 4, 0, || false), Some(Taker::Ioeventfd(7)), "ring full");
    // Upstream's bsearch probes the ioeventfd for a write past it, finds the write "greater"
    // and stops: the rest of the zone is lost to the ring (writes there exit), while writes
    // before the ioeventfd still reach the zone.
    assert_eq!(write(&bus, 0x1020, 4, 0, || true), None);
    assert_eq!(write(&bus, 0x1000, 4, 0, || true), Some(Taker::Zone));
    assert_eq!(write(&bus, 0x1008, 4, 0, || true), Some(Taker::Zone));
}

#[test]
fn ioeventfd_then_zone_over_it_the_ioeventfd_wins() {
    let bus = bus_of(&[ev(0x1010, 4, None, 7), zone(0x1000, 0x100)]);
    assert_eq!(write(&bus, 0x1010, 4, 0, || panic!("the ioeventfd comes first")), Some(Taker::Ioeventfd(7)));
    // A write the ioeventfd does not match goes on to the zone.
    assert_eq!(write(&bus, 0x1010, 2, 0, || true), Some(Taker::Zone));
    assert_eq!(write(&bus, 0x1020, 4, 0, || true), Some(Taker::Zone));
}

#[test]
fn a_zone_starting_at_the_ioeventfd_and_longer_comes_after_it_either_way() {
    // Upstream's insertion puts (A, 4) before (A, 0x100) whichever came first.
    for bus in [
        bus_of(&[zone(0x1000, 0x100), ev(0x1000, 4, None, 7)]),
        bus_of(&[ev(0x1000, 4, None, 7), zone(0x1000, 0x100)]),
    ] {
        assert_eq!(write(&bus, 0x1000, 4, 0, || panic!("ioeventfd first")), Some(Taker::Ioeventfd(7)));
    }
    // Same range: registration order decides.
    let bus = bus_of(&[zone(0x1000, 4), ev(0x1000, 4, None, 7)]);
    assert_eq!(write(&bus, 0x1000, 4, 0, || true), Some(Taker::Zone));
    let bus = bus_of(&[ev(0x1000, 4, None, 7), zone(0x1000, 4)]);
    assert_eq!(write(&bus, 0x1000, 4, 0, || true), Some(Taker::Ioeventfd(7)));
}

#[test]
fn a_zone_of_size_zero_takes_nothing() {
    let bus = bus_of(&[zone(0x1000, 0)]);
    assert_eq!(write(&bus, 0x1000, 1, 0, || true), None);
}

#[test]
fn first_dev_agrees_with_a_linear_scan_on_disjoint_ranges() {
    // Disjoint ranges (the usual case) make a sorted array: bsearch then finds the same range
    // as a linear scan, whatever the registration order.
    let mut seed = 0x1234_5678u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for round in 0..200 {
        let n = (rnd() % 40) as usize;
        let mut ranges: Vec<Range<u32>> = (0..n)
            .map(|i| {
                let len = [0, 1, 2, 4, 8][(rnd() % 5) as usize];
                ev(i as u64 * 16, len, None, i as u32)
            })
            .collect();
        for i in (1..ranges.len()).rev() {
            ranges.swap(i, (rnd() as usize) % (i + 1));
        }
        let bus = bus_of(&ranges);
        assert!(bus.windows(2).all(|w| w[0].addr < w[1].addr), "round {round}: sorted");
        for addr in 0..(n as u64 * 16 + 16) {
            for len in [1, 2, 4, 8] {
                let linear = bus.iter().position(|r| cmp(addr, len, r.addr, r.len) == 0);
                assert_eq!(first_dev(&bus, addr, len), linear, "round {round} addr {addr:#x} len {len}");
            }
        }
    }
}

#[test]
fn collisions_as_upstream() {
    let bus = bus_of(&[ev(0x10, 4, Some(1), 1), ev(0x20, 0, None, 1), ev(0x30, 2, None, 1)]);
    let a = |addr, len, flags, dm| args(addr, len, flags, dm);
    // Same address and length: a different data match is fine, the same one or a wildcard not.
    assert_eq!(assign_index(&bus, &a(0x10, 4, FLAG_DATAMATCH, 2)).map(|_| ()), Ok(()));
    assert_eq!(assign_index(&bus, &a(0x10, 4, FLAG_DATAMATCH, 1)), Err(Error::Exists));
    assert_eq!(assign_index(&bus, &a(0x10, 4, 0, 0)), Err(Error::Exists));
    // Another length at the same address is fine; no length collides with anything there.
    assert_eq!(assign_index(&bus, &a(0x10, 2, 0, 0)).map(|_| ()), Ok(()));
    assert_eq!(assign_index(&bus, &a(0x10, 0, 0, 0)), Err(Error::Exists));
    assert_eq!(assign_index(&bus, &a(0x20, 8, FLAG_DATAMATCH, 5)), Err(Error::Exists));
    // A wildcard collides with every data match of its length.
    assert_eq!(assign_index(&bus, &a(0x30, 2, FLAG_DATAMATCH, 9)), Err(Error::Exists));
    // The eventfd plays no part; zones never collide.
    let bus = bus_of(&[zone(0x10, 4)]);
    assert_eq!(assign_index(&bus, &a(0x10, 4, 0, 0)), Ok(1));
}

#[test]
fn deassign_must_match_everything() {
    let bus = bus_of(&[ev(0x10, 4, Some(1), 1), ev(0x20, 4, None, 1), ev(0x30, 0, None, 2)]);
    assert_eq!(deassign_index(&bus, &args(0x10, 4, FLAG_DATAMATCH, 1), &1), Ok(0));
    assert_eq!(deassign_index(&bus, &args(0x10, 4, FLAG_DATAMATCH, 2), &1), Err(Error::NotFound));
    assert_eq!(deassign_index(&bus, &args(0x10, 4, 0, 1), &1), Err(Error::NotFound), "wildcard vs match");
    assert_eq!(deassign_index(&bus, &args(0x10, 4, FLAG_DATAMATCH, 1), &2), Err(Error::NotFound), "eventfd");
    assert_eq!(deassign_index(&bus, &args(0x10, 2, FLAG_DATAMATCH, 1), &1), Err(Error::NotFound), "len");
    assert_eq!(deassign_index(&bus, &args(0x20, 4, 0, 99), &1), Ok(1), "a wildcard ignores datamatch");
    assert_eq!(deassign_index(&bus, &args(0x20, 4, FLAG_DATAMATCH, 99), &1), Err(Error::NotFound));
    assert_eq!(deassign_index(&bus, &args(0x30, 0, 0, 0), &2), Ok(2));
    assert_eq!(deassign_index(&bus_of(&[zone(0x10, 4)]), &args(0x10, 4, 0, 0), &0), Err(Error::NotFound));
}

#[test]
fn only_zones_fill_a_bus() {
    let mut bus: Vec<Range<u32>> = Vec::new();
    for i in 0..NR_IOBUS_DEVS as u64 * 2 {
        let at = assign_index(&bus, &args(0x10_0000 + i * 8, 4, 0, 0)).expect("ioeventfds do not count");
        bus.insert(at, ev(0x10_0000 + i * 8, 4, None, 0));
    }
    for i in 0..NR_IOBUS_DEVS as u64 {
        let at = zone_index(&bus, i * 8, 4).expect("room for the zone");
        bus.insert(at, zone(i * 8, 4));
    }
    assert_eq!(zone_index(&bus, 0x20_0000, 4), Err(Error::NoSpace));
    assert_eq!(assign_index(&bus, &args(0x20_0000, 4, 0, 0)), Err(Error::NoSpace));
    // A collision is reported before the lack of room.
    assert_eq!(assign_index(&bus, &args(0x10_0000, 4, 0, 0)), Err(Error::Exists));
}

#[test]
fn unregistering_removes_zones_containing_the_range() {
    let z = zone(0x1000, 16);
    assert!(zone_unregistered(&z, 0x1000, 16));
    assert!(zone_unregistered(&z, 0x1004, 4));
    assert!(!zone_unregistered(&z, 0x1000, 32));
    assert!(!zone_unregistered(&ev(0x1000, 16, None, 0), 0x1000, 16), "ioeventfds stay");
}

/// The scenario of selftests/ioeventfd.c `order_against_coalesced_zones` (offsets from its MMIO
/// window), registered in the test's order; what each of the guest's writes reaches.
#[test]
fn selftest_order_scenario() {
    let all = [
        zone(0x100, 0x100),
        ev(0x110, 4, None, 1),
        ev(0x210, 4, None, 2),
        zone(0x200, 0x100),
        zone(0x300, 0x100),
        ev(0x300, 4, None, 3),
    ];
    let writes = [(0x110, 4), (0x120, 4), (0x104, 4), (0x210, 4), (0x210, 2), (0x300, 4)];
    let outcome = |bus: &[Range<u32>], room: bool| -> Vec<Option<Taker<u32>>> {
        writes.iter().map(|&(a, l)| write(bus, a, l, 0, || room)).collect()
    };
    let z = Some(Taker::Zone);
    let e = |n| Some(Taker::Ioeventfd(n));
    let bus = bus_of(&all);
    assert_eq!(outcome(&bus, true), [z, None, z, e(2), z, e(3)]);
    assert_eq!(outcome(&bus, false), [e(1), None, None, e(2), None, e(3)]);
    // Zone A unregistered.
    let bus: Vec<_> = bus.into_iter().filter(|r| !zone_unregistered(r, 0x100, 0x100)).collect();
    assert_eq!(outcome(&bus, true), [e(1), None, None, e(2), z, e(3)]);
}
