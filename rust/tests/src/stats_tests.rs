//! The binary stats image.

use crate::stats::{layout, read_window, write_image, Desc, DESC_SIZE, NAME_SIZE, VCPU, VM};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn image_layout() {
    let descs = [Desc { name: "exits", flags: 0 }, Desc { name: "online_vcpus", flags: 1 }];
    let (id, desc, data, len) = layout(2);
    assert_eq!((id, desc, data, len), (24, 72, 72 + 2 * DESC_SIZE, 72 + 2 * DESC_SIZE + 16));
    let mut img = vec![0xffu8; len];
    write_image(b"kvm-42", &descs, &[7, 3], &mut img);
    // Header: flags, name_size, num_desc, id/desc/data offsets.
    assert_eq!([0, 1, 2, 3, 4, 5].map(|i| u32_at(&img, i * 4)), [0, NAME_SIZE as u32, 2, 24, 72, data as u32]);
    assert_eq!(&img[24..31], b"kvm-42\0");
    // Second descriptor: flags 1, exponent 0, size 1, offset 8, bucket 0, name.
    let d = desc + DESC_SIZE;
    assert_eq!(u32_at(&img, d), 1);
    assert_eq!(&img[d + 4..d + 8], &[0, 0, 1, 0]);
    assert_eq!(u32_at(&img, d + 8), 8);
    assert_eq!(u32_at(&img, d + 12), 0);
    assert_eq!(&img[d + 16..d + 29], b"online_vcpus\0");
    assert_eq!(u64::from_le_bytes(img[data + 8..data + 16].try_into().unwrap()), 3);
}

#[test]
fn windows_and_names() {
    assert_eq!(read_window(100, 0, 10), 0..10);
    assert_eq!(read_window(100, 95, 10), 95..100);
    assert_eq!(read_window(100, 100, 10), 100..100);
    assert_eq!(read_window(100, u64::MAX, 10), 100..100);
    for d in VM.iter().chain(VCPU) {
        assert!(d.name.len() < NAME_SIZE);
    }
    assert_eq!(VCPU.len(), crate::stats::vcpu::COUNT);
}
