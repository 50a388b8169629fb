//! Connection failures in words, and which of them retrying cannot fix.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

/// How long a broker's refusal of the login must go on before a run believes it: a broker
/// that slows down guessing (edgewatch's login backoff) refuses even the right password for a
/// moment after wrong ones, with the same reason code.
pub(crate) const LOGIN_REFUSAL_SETTLE: Duration = Duration::from_secs(3);

/// Why a connection to the broker failed, said for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What happened, e.g. `connection refused: nothing listens on 127.0.0.1:1`.
    pub(crate) reason: String,
    /// Retrying the same way gets the same answer: nothing listens on the port, or the broker
    /// refused the login. A fleet none of whose devices ever connected stops on such a failure
    /// once it has gone on for `settle`.
    pub(crate) permanent: bool,
    /// How long a permanent failure must go on before it is believed.
    pub(crate) settle: Duration,
}

/// Explains `error` from a connection to `host:port`.
pub(crate) fn explain(error: &ConnectionError, host: &str, port: u16) -> Failure {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let io = |e: &std::io::Error| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Failure {
                reason: format!("connection refused: nothing listens on {addr}"),
                permanent: true,
                settle: Duration::ZERO,
            }
        } else {
            transient(format!("cannot connect to {addr}: {e}"))
        }
    };
    match error {
        ConnectionError::Io(e) => io(e),
        ConnectionError::MqttState(StateError::Io(e)) => io(e),
        ConnectionError::ConnectionRefused(code) => {
            let words = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 is not supported",
                ConnectReturnCode::ServiceUnavailable => "server unavailable",
                ConnectReturnCode::Success => "no reason given",
            };
            Failure {
                reason: format!("the broker refused the connection: {words}"),
                // A busy broker may take the device a moment later.
                permanent: *code != ConnectReturnCode::ServiceUnavailable,
                settle: LOGIN_REFUSAL_SETTLE,
            }
        }
        ConnectionError::NetworkTimeout => transient(format!("no answer from {addr} in time")),
        ConnectionError::FlushTimeout => transient(format!(
            "the connection to {addr} stalled (write timed out)"
        )),
        ConnectionError::NotConnAck(_) => transient(format!(
            "{addr} did not answer CONNECT with CONNACK: is it an MQTT 3.1.1 broker?"
        )),
        ConnectionError::MqttState(e) => {
            transient(format!("the connection to {addr} failed: MQTT error: {e}"))
        }
        other => transient(format!("the connection to {addr} failed: {other}")),
    }
}

fn transient(reason: String) -> Failure {
    Failure {
        reason,
        permanent: false,
        settle: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_said_in_words_and_are_permanent() {
        let refused =
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            explain(&refused, "127.0.0.1", 1),
            Failure {
                reason: "connection refused: nothing listens on 127.0.0.1:1".to_owned(),
                permanent: true,
                settle: Duration::ZERO,
            }
        );
        let login = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert_eq!(
            explain(&login, "::1", 1883),
            Failure {
                reason: "the broker refused the connection: bad user name or password".to_owned(),
                permanent: true,
                settle: LOGIN_REFUSAL_SETTLE,
            }
        );
        let busy = ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable);
        assert!(!explain(&busy, "h", 1).permanent);
        let timeout = explain(&ConnectionError::NetworkTimeout, "::1", 1883);
        assert_eq!(timeout.reason, "no answer from [::1]:1883 in time");
        assert!(!timeout.permanent);
        let reset = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let reset = explain(&reset, "h", 1);
        assert!(!reset.permanent);
        assert!(!reset.reason.contains("Os {"), "{}", reset.reason);
    }
}
