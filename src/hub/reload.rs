//! SIGHUP: the configuration file read again, and what of it a running hub can take.

use super::{AppConfig, Running};

impl Running {
    /// SIGHUP: reads the configuration file again and applies what can change while running,
    /// the ingest mappings and the log level; a setting that needs a restart is named in the
    /// log. A file that does not load changes nothing (logged): the hub goes on as it was.
    pub(super) fn reload(&self, file: Option<&std::path::Path>, current: &mut AppConfig) {
        let Some(file) = file else {
            tracing::info!(
                "SIGHUP: no configuration file to read again (started without --config)"
            );
            return;
        };
        let new = match AppConfig::load(file) {
            Ok(new) => new,
            Err(err) => {
                tracing::error!(%err, "SIGHUP: configuration not reloaded, the hub goes on as it was");
                return;
            }
        };
        let mappings = match new.ingest.compile() {
            Ok(m) => m,
            Err(err) => {
                tracing::error!(key = %err.key, "SIGHUP: configuration not reloaded: {}", err.message);
                return;
            }
        };
        let count = mappings.iter().count();
        self.bridge.ingest().set_mappings(mappings);
        let accounts = self.reload_accounts(current, &new);
        match crate::logging::set_level(&new.log.level) {
            Ok(true) => {}
            Ok(false) => tracing::info!("SIGHUP: EDGEWATCH_LOG is set: the log level stays"),
            Err(err) => tracing::warn!(%err, "SIGHUP: log level not changed"),
        }
        let restart: Vec<&str> = [
            ("broker", current.broker != new.broker),
            ("bridge", current.bridge != new.bridge),
            ("live", current.live != new.live),
            ("auth", current.auth != new.auth),
            ("serial", current.serial != new.serial),
            ("uplink", current.uplink != new.uplink),
            ("log.json", current.log.json != new.log.json),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(sections = ?restart, "SIGHUP: these changes need a restart; the rest is applied");
        }
        tracing::info!(file = %file.display(), mappings = count, level = %new.log.level, accounts, "SIGHUP: configuration reloaded (ingest mappings, log level, accounts and roles)");
        let (ingest, log) = (new.ingest, new.log);
        current.ingest = ingest;
        current.log = log;
    }

    /// New `[[broker.users]]` and roles, when the hub had accounts and still has: later MQTT
    /// and HTTP logins and their permissions use them (connections and sessions already open
    /// keep theirs). From none to some or back needs a restart (the listeners' loopback rule
    /// depends on it). `true` when the accounts changed and were applied.
    fn reload_accounts(&self, current: &mut AppConfig, new: &AppConfig) -> bool {
        let (old, new_b) = (&current.broker, &new.broker);
        if old.users == new_b.users && old.roles == new_b.roles {
            return false;
        }
        let Some(broker) = &self.broker else {
            return false;
        };
        if old.users.is_empty() || new_b.users.is_empty() {
            tracing::warn!("SIGHUP: accounts added to none, or all removed: that needs a restart (the listeners' loopback rule depends on it)");
            return false;
        }
        broker.credentials().replace_accounts(&new_b.credentials());
        current.broker.users.clone_from(&new_b.users);
        current.broker.roles.clone_from(&new_b.roles);
        true
    }
}
