//! [`SerialPortConfig`]: one `[[serial]]` entry of the config file, and [`SerialFormat`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use edgewatch_protocol::payload::is_valid_id;
use edgewatch_protocol::InvalidSetting;
use serde::{Deserialize, Serialize};

/// How readings are framed on the port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SerialFormat {
    /// postcard + COBS frames, each ending in 0x00.
    #[default]
    Cobs,
    /// `metric=value [unit]` text lines ending in `\n`.
    Lines,
}

impl fmt::Display for SerialFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SerialFormat::Cobs => "cobs",
            SerialFormat::Lines => "lines",
        })
    }
}

/// One serial port, a `[[serial]]` entry of the config file. `path` and `device_id` are
/// required; the rest have defaults; unknown fields are an error.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// The device, e.g. `/dev/ttyUSB0` (or a stable `/dev/serial/by-id/...` link).
    pub path: PathBuf,
    /// Baud rate; the line is always 8N1 without flow control. Default 115200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `cobs` or `lines`. Default `cobs`.
    #[serde(default)]
    pub format: SerialFormat,
    /// The device id of text lines, and of COBS frames that carry none.
    pub device_id: String,
    /// Longest frame (encoded, without the 0x00) or line (without the `\n`) in bytes; longer
    /// ones are skipped as `too_long`. Default 1024.
    #[serde(default = "default_max_frame_len")]
    pub max_frame_len: usize,
    /// Milliseconds before trying to reopen a port that disappeared or failed to open; doubled
    /// after each failed attempt up to 10 s. Default 1000.
    #[serde(default = "default_reopen_delay_ms")]
    pub reopen_delay_ms: u64,
}

fn default_baud() -> u32 {
    115_200
}

fn default_max_frame_len() -> usize {
    1024
}

fn default_reopen_delay_ms() -> u64 {
    1000
}

impl SerialPortConfig {
    /// A port at `path` for `device_id`, every other setting at its default.
    pub fn new(path: impl Into<PathBuf>, device_id: impl Into<String>) -> Self {
        SerialPortConfig {
            path: path.into(),
            baud: default_baud(),
            format: SerialFormat::default(),
            device_id: device_id.into(),
            max_frame_len: default_max_frame_len(),
            reopen_delay_ms: default_reopen_delay_ms(),
        }
    }

    /// Checks what serde cannot. `index` is the entry's position in the `[[serial]]` list; the
    /// error starts with the key, e.g. `serial[0].baud: must be above 0`.
    pub fn validate(&self, index: usize) -> Result<(), InvalidSetting> {
        let key = |field: &str| format!("serial[{index}].{field}");
        let err = |field: &str, message: String| Err(InvalidSetting::new(key(field), message));
        if self.path.as_os_str().is_empty() {
            return err("path", "must not be empty".to_owned());
        }
        if self.path.to_str().is_none() {
            return err("path", "must be valid UTF-8".to_owned());
        }
        if self.baud == 0 {
            return err("baud", "must be above 0".to_owned());
        }
        if !is_valid_id(&self.device_id) {
            return err(
                "device_id",
                format!(
                    "invalid device id {:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -",
                    self.device_id
                ),
            );
        }
        if !(16..=1_048_576).contains(&self.max_frame_len) {
            return err(
                "max_frame_len",
                "must be between 16 and 1048576 bytes".to_owned(),
            );
        }
        if !(10..=3_600_000).contains(&self.reopen_delay_ms) {
            return err(
                "reopen_delay_ms",
                "must be between 10 and 3600000 milliseconds".to_owned(),
            );
        }
        Ok(())
    }

    pub(crate) fn reopen_delay(&self) -> Duration {
        Duration::from_millis(self.reopen_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg: SerialPortConfig =
            serde_json::from_str(r#"{"path":"/dev/ttyUSB0","device_id":"s1"}"#).unwrap();
        assert_eq!(cfg, SerialPortConfig::new("/dev/ttyUSB0", "s1"));
        assert_eq!(
            (cfg.baud, cfg.format, cfg.max_frame_len, cfg.reopen_delay_ms),
            (115_200, SerialFormat::Cobs, 1024, 1000)
        );
        assert_eq!(cfg.validate(0), Ok(()));
        let lines: SerialPortConfig = serde_json::from_str(
            r#"{"path":"/dev/x","device_id":"s1","format":"lines","baud":9600}"#,
        )
        .unwrap();
        assert_eq!((lines.format, lines.baud), (SerialFormat::Lines, 9600));
        assert!(serde_json::from_str::<SerialPortConfig>(
            r#"{"path":"/dev/x","device_id":"s1","speed":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<SerialPortConfig>(
            r#"{"path":"/dev/x","device_id":"s1","format":"COBS"}"#
        )
        .is_err());

        let invalid = |edit: fn(&mut SerialPortConfig)| {
            let mut cfg = SerialPortConfig::new("/dev/ttyUSB0", "s1");
            edit(&mut cfg);
            cfg.validate(3).unwrap_err()
        };
        assert!(invalid(|c| c.path = PathBuf::new()).key == "serial[3].path");
        assert!(invalid(|c| c.baud = 0).key == "serial[3].baud");
        assert!(invalid(|c| c.device_id = "a b".into()).key == "serial[3].device_id");
        assert!(invalid(|c| c.max_frame_len = 0).key == "serial[3].max_frame_len");
        assert!(invalid(|c| c.reopen_delay_ms = 0).key == "serial[3].reopen_delay_ms");
    }
}
