//! The serial emulator through a real pseudo-terminal, read with plain `std::fs::File`.

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use edgewatch_protocol::frame::{FrameDecoder, LineDecoder};
use edgewatch_sim::{spawn_serial_emulator, Faults, SerialConfig, SerialFormat};

/// What a reader thread saw.
#[derive(Debug, Default)]
struct Seen {
    readings: Vec<(Option<String>, Option<String>, f64)>,
    errors: usize,
}

/// Opens `path`, reads until `want` valid readings were decoded, closes the file.
fn read_readings(path: &std::path::Path, format: SerialFormat, want: usize) -> Seen {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut file = std::fs::File::open(&path).unwrap();
        let mut frames = FrameDecoder::new(256);
        let mut lines = LineDecoder::new(256);
        let mut seen = Seen::default();
        let mut buf = [0u8; 256];
        while seen.readings.len() < want {
            let n = file.read(&mut buf).unwrap();
            assert!(n > 0, "pty closed");
            match format {
                SerialFormat::Cobs => {
                    frames.push(&buf[..n]);
                    while let Some(r) = frames.next_frame() {
                        match r {
                            Ok(r) => seen.readings.push((r.device_id, r.metric, r.value)),
                            Err(_) => seen.errors += 1,
                        }
                    }
                }
                SerialFormat::Lines => {
                    lines.push(&buf[..n]);
                    while let Some(r) = lines.next_line() {
                        match r {
                            Ok(r) => seen.readings.push((None, Some(r.metric), r.value)),
                            Err(_) => seen.errors += 1,
                        }
                    }
                }
            }
        }
        let _ = tx.send(seen);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("readings within 10 s")
}

fn config(format: SerialFormat) -> SerialConfig {
    SerialConfig {
        device_id: "pty-1".to_owned(),
        format,
        interval: Duration::from_millis(20),
        faults: Faults::none(),
        garbage_every: Some(4),
        ..SerialConfig::default()
    }
}

#[test]
fn cobs_frames_through_a_pty_survive_close_and_reopen() {
    let emulator = spawn_serial_emulator(config(SerialFormat::Cobs)).unwrap();
    assert!(
        emulator.path().starts_with("/dev/pts"),
        "{:?}",
        emulator.path()
    );

    let first = read_readings(emulator.path(), SerialFormat::Cobs, 20);
    assert!(first.errors > 0, "injected garbage is seen and skipped");
    assert!(first
        .readings
        .iter()
        .all(|(d, m, v)| d.as_deref() == Some("pty-1")
            && matches!(m.as_deref(), Some("temperature" | "humidity"))
            && v.is_finite()));

    // Unplug: nobody reads for a while (the scenario under test); then the port is opened
    // again.
    std::thread::sleep(Duration::from_millis(400));
    let second = read_readings(emulator.path(), SerialFormat::Cobs, 10);
    assert!(second.readings.len() >= 10);
    let counts = emulator.stop();
    assert!(counts.written >= 30 && counts.injected > 0, "{counts:?}");
}

#[test]
fn text_lines_through_a_pty() {
    let emulator = spawn_serial_emulator(config(SerialFormat::Lines)).unwrap();
    let seen = read_readings(emulator.path(), SerialFormat::Lines, 12);
    assert!(seen.errors > 0, "injected garbage lines are rejected");
    assert!(seen
        .readings
        .iter()
        .any(|(_, m, _)| m.as_deref() == Some("temperature")));
    drop(emulator);
}

#[test]
fn a_reader_that_never_comes_back_does_not_block_the_emulator() {
    let emulator = spawn_serial_emulator(SerialConfig {
        interval: Duration::from_millis(1),
        ..config(SerialFormat::Cobs)
    })
    .unwrap();
    // Nobody reads: the pty fills up; the emulator keeps running and counts drops.
    let progressed = |at_least: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let c = emulator.counts();
            if c.dropped > 0 && c.written + c.dropped > at_least {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the emulator stopped making progress: {c:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = progressed(0);
    progressed(before.written + before.dropped);
    // And a late reader still gets readings.
    let seen = read_readings(emulator.path(), SerialFormat::Cobs, 5);
    assert!(seen.readings.len() >= 5);
}
