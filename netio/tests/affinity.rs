//! CPU pinning.

use std::io::ErrorKind;

use netio::{available_cores, pin_current_thread};

#[test]
fn pin_to_core_zero() {
    assert!(available_cores() >= 1);
    std::thread::spawn(|| pin_current_thread(0).unwrap())
        .join()
        .unwrap();
}

#[test]
fn pin_to_every_available_core() {
    for core in 0..available_cores() {
        std::thread::spawn(move || pin_current_thread(core).unwrap())
            .join()
            .unwrap();
    }
}

#[test]
fn out_of_range_core_is_an_error() {
    let err = std::thread::spawn(|| pin_current_thread(usize::MAX).unwrap_err())
        .join()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
