//! Login limiting: password checks that cannot exhaust the box or reveal which accounts exist.
//!
//! One argon2 check takes about 19 MiB and tens of milliseconds, by design. Unbounded (one
//! blocking thread each, as before), 200 wrong-password logins at once took the hub from 40 MB
//! to 3.6 GB and most of it stayed resident. So:
//!
//! * checks run on `login_concurrency` dedicated threads ([`Verifier`]), each reusing its own
//!   memory; at most `login_queue_max` logins wait for one, more are refused at once (`busy`);
//! * a failed login puts its address and its username into a backoff (100 ms, doubling with
//!   each further failure up to `login_backoff_max_secs`); a login from an address or for a
//!   username in backoff is refused without a check (`backoff`). An address may have
//!   [`PER_IP_IN_FLIGHT`] checks waiting or running; more are refused (`busy`);
//! * an unknown username is checked against a dummy hash, so it costs what a known one does
//!   and gets the same backoff: timing and refusals do not tell which usernames exist;
//! * a successful check is remembered for `login_cache_secs` as a keyed hash (BLAKE2b with a
//!   random key made at start) of username and password, so a fleet reconnecting after a power
//!   cut, or a device whose address another client put into backoff, logs in without a check.
//!
//! Addresses come from [`crate::peer`]; without them only the per-username part applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use blake2::digest::Mac;

/// Checks one address may have waiting or running at once.
pub const PER_IP_IN_FLIGHT: u32 = 4;
/// The first backoff after a failure; it doubles with each further failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Backoff state is forgotten this long after its backoff ended without a new failure.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses and usernames with backoff state kept at most (each table).
const MAX_TRACKED: usize = 10_000;

/// The `broker.limits.login_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Password checks running at once.
    pub concurrency: usize,
    /// Logins waiting for a check; more are refused at once.
    pub queue_max: usize,
    /// How long a successful login is remembered (0: never).
    pub cache_secs: u64,
    /// The longest backoff after repeated failures.
    pub backoff_max_secs: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            concurrency: 2,
            queue_max: 64,
            cache_secs: 600,
            backoff_max_secs: 30,
        }
    }
}

/// What became of a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Password checked and correct.
    Accepted,
    /// Matched a recent successful login; no check needed.
    Remembered,
    /// Checked and wrong (or unknown username).
    Wrong,
    /// Refused without a check: the address or username is in backoff.
    Backoff,
    /// Refused without a check: too many checks waiting.
    Busy,
}

impl Verdict {
    /// Whether the client may connect.
    pub fn accepted(self) -> bool {
        matches!(self, Self::Accepted | Self::Remembered)
    }

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Remembered => "remembered",
            Self::Wrong => "wrong",
            Self::Backoff => "backoff",
            Self::Busy => "busy",
        }
    }

    const ALL: [Verdict; 5] = [
        Self::Accepted,
        Self::Remembered,
        Self::Wrong,
        Self::Backoff,
        Self::Busy,
    ];
}

/// Counts of logins by [`Verdict`].
#[derive(Debug, Default)]
pub struct LoginStats {
    counts: [AtomicU64; 5],
}

impl LoginStats {
    /// `(label, count)` for every verdict.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Verdict::ALL
            .iter()
            .zip(&self.counts)
            .map(|(v, n)| (v.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    fn count(&self, verdict: Verdict) {
        let i = Verdict::ALL.iter().position(|v| *v == verdict).unwrap_or(0);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Failures of one address or username.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

#[derive(Debug, Default)]
struct GateState {
    by_ip: HashMap<IpAddr, Backoff>,
    by_user: HashMap<String, Backoff>,
    in_flight: HashMap<IpAddr, u32>,
    remembered: HashMap<String, ([u8; 64], Instant)>,
}

/// Decides logins against a table of argon2 hashes (see the module doc).
pub(crate) struct LoginGate {
    limits: LoginLimits,
    verifier: Verifier,
    state: Mutex<GateState>,
    key: [u8; 64],
    stats: Arc<LoginStats>,
}

impl LoginGate {
    pub(crate) fn new(limits: LoginLimits) -> Self {
        let mut key = [0u8; 64];
        OsRng.fill_bytes(&mut key);
        Self {
            verifier: Verifier::start(limits.concurrency.max(1), limits.queue_max),
            limits,
            state: Mutex::default(),
            key,
            stats: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> Arc<LoginStats> {
        self.stats.clone()
    }

    /// Decides a login for `username` with `password`, whose hash is `hash` (`None`: no such
    /// user), from `ip` when known.
    pub(crate) async fn check(
        &self,
        ip: Option<IpAddr>,
        username: &str,
        password: String,
        hash: Option<String>,
    ) -> Verdict {
        let verdict = self.decide(ip, username, password, hash).await;
        self.stats.count(verdict);
        verdict
    }

    async fn decide(
        &self,
        ip: Option<IpAddr>,
        username: &str,
        password: String,
        hash: Option<String>,
    ) -> Verdict {
        let mac = self.mac(username, &password);
        let now = Instant::now();
        {
            let mut state = self.lock();
            if hash.is_some() && self.remembered(&state, username, &mac, now) {
                return Verdict::Remembered;
            }
            let blocked = |b: Option<&Backoff>| b.is_some_and(|b| b.until > now);
            if blocked(ip.and_then(|ip| state.by_ip.get(&ip)))
                || blocked(state.by_user.get(username))
            {
                return Verdict::Backoff;
            }
            if let Some(ip) = ip {
                let n = state.in_flight.entry(ip).or_insert(0);
                if *n >= PER_IP_IN_FLIGHT {
                    return Verdict::Busy;
                }
                *n += 1;
            }
        }
        let checked = self.verifier.verify(password, hash.clone()).await;
        let mut state = self.lock();
        if let Some(ip) = ip {
            if let Some(n) = state.in_flight.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    state.in_flight.remove(&ip);
                }
            }
        }
        match checked {
            None => Verdict::Busy,
            Some(true) => {
                if let Some(ip) = ip {
                    state.by_ip.remove(&ip);
                }
                state.by_user.remove(username);
                if self.limits.cache_secs > 0 {
                    state.remembered.insert(username.to_owned(), (mac, now));
                }
                Verdict::Accepted
            }
            Some(false) => {
                let max = Duration::from_secs(self.limits.backoff_max_secs);
                let now = Instant::now();
                if let Some(ip) = ip {
                    fail(&mut state.by_ip, ip, now, max);
                }
                fail(&mut state.by_user, username.to_owned(), now, max);
                Verdict::Wrong
            }
        }
    }

    /// Forgets every remembered login (the accounts changed).
    pub(crate) fn forget_remembered(&self) {
        self.lock().remembered.clear();
    }

    fn remembered(&self, state: &GateState, username: &str, mac: &[u8; 64], now: Instant) -> bool {
        let ttl = Duration::from_secs(self.limits.cache_secs);
        state.remembered.get(username).is_some_and(|(known, at)| {
            now.duration_since(*at) < ttl && constant_time_eq(known, mac)
        })
    }

    fn mac(&self, username: &str, password: &str) -> [u8; 64] {
        let mut mac = <blake2::Blake2bMac512 as Mac>::new_from_slice(&self.key)
            .expect("64 bytes is a valid BLAKE2b key length");
        mac.update(&(username.len() as u64).to_le_bytes());
        mac.update(username.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records a failure of `key` at `now`: its backoff doubles, up to `max`.
fn fail<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Backoff>,
    key: K,
    now: Instant,
    max: Duration,
) {
    if table.len() >= MAX_TRACKED {
        table.retain(|_, b| b.until + FORGET_AFTER > now);
        if table.len() >= MAX_TRACKED {
            // Still full of active backoffs: make room for the newest failure.
            table.retain(|_, b| b.until > now + max / 2);
        }
    }
    let entry = table.entry(key).or_insert(Backoff {
        failures: 0,
        until: now,
    });
    if entry.until + FORGET_AFTER <= now {
        entry.failures = 0;
    }
    entry.failures = entry.failures.saturating_add(1);
    let doublings = entry.failures.saturating_sub(1).min(20);
    let wait = BACKOFF_FIRST.saturating_mul(1 << doublings).min(max);
    entry.until = now + wait;
}

fn constant_time_eq(a: &[u8; 64], b: &[u8; 64]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password check waiting for a verifier thread.
struct Job {
    password: String,
    /// `None`: check against the dummy hash (unknown username), which always fails.
    hash: Option<String>,
    answer: tokio::sync::oneshot::Sender<bool>,
}

/// Dedicated threads that run argon2 checks, fed by a bounded queue. A thread keeps the
/// algorithm's memory from one check to the next (see
/// [`crate::password::verify_with_memory`]): a thread that has checked a password holds
/// 19 MiB from then on, so the hub holds `concurrency` × 19 MiB at most.
struct Verifier {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Verifier {
    fn start(concurrency: usize, queue_max: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(queue_max);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("login-check-{i}"))
                .spawn(move || verify_jobs(&rx));
            if let Err(err) = spawned {
                tracing::error!(%err, "cannot start a login check thread");
            }
        }
        Self { jobs }
    }

    /// Checks `password`; `None` when the queue is full (or the threads are gone).
    async fn verify(&self, password: String, hash: Option<String>) -> Option<bool> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Job {
            password,
            hash,
            answer,
        };
        self.jobs.try_send(job).ok()?;
        answered.await.ok()
    }
}

fn verify_jobs(rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    // The algorithm's memory, kept from one check to the next (see `verify_with_memory`).
    let mut memory = Vec::new();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the gate is gone
            }
        };
        let ok = match &job.hash {
            Some(hash) => crate::password::verify_with_memory(&job.password, hash, &mut memory),
            None => {
                crate::password::verify_with_memory(&job.password, DUMMY_HASH, &mut memory);
                false
            }
        };
        let _ = job.answer.send(ok);
    }
}

/// The hash checked for unknown usernames, so they cost what known ones do: the parameters
/// `edgewatch passwd` uses (argon2id, 19 MiB, 2 passes). Its password does not matter (the
/// result is "wrong" whatever it is), so it is a constant rather than made at start, which
/// would cost a 19 MiB allocation outside the check threads' kept memory.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$kTANZo1/7sBDnQyS5dWj2w$pECe4TOCojUJGmYLBNv2ngzPYNIjS0A869ls7gjKQ9k";

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limits: LoginLimits) -> (LoginGate, String) {
        gate_with(limits)
    }

    fn gate_with(limits: LoginLimits) -> (LoginGate, String) {
        (
            LoginGate::new(limits),
            crate::password::hash_password("pw").unwrap(),
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn failures_back_off_by_address_and_username_and_successes_are_remembered() {
        let (gate, hash) = gate(LoginLimits::default());
        let h = || Some(hash.clone());
        assert_eq!(
            gate.check(ip("10.0.0.1"), "d1", "pw".into(), h()).await,
            Verdict::Accepted
        );
        assert_eq!(
            gate.check(ip("10.0.0.9"), "d1", "pw".into(), h()).await,
            Verdict::Remembered
        );
        assert_eq!(
            gate.check(ip("10.0.0.2"), "d1", "no".into(), h()).await,
            Verdict::Wrong
        );
        // The address and the username are in backoff now: refused without a check...
        assert_eq!(
            gate.check(ip("10.0.0.2"), "d2", "pw".into(), h()).await,
            Verdict::Backoff
        );
        assert_eq!(
            gate.check(ip("10.0.0.3"), "d1", "no".into(), h()).await,
            Verdict::Backoff
        );
        // ...but the right password, recently checked, still gets in from anywhere.
        assert_eq!(
            gate.check(ip("10.0.0.2"), "d1", "pw".into(), h()).await,
            Verdict::Remembered
        );
        tokio::time::sleep(BACKOFF_FIRST + Duration::from_millis(20)).await;
        assert_eq!(
            gate.check(ip("10.0.0.2"), "d2", "pw".into(), h()).await,
            Verdict::Accepted
        );
        let counts: HashMap<_, _> = gate.stats().snapshot().into_iter().collect();
        assert_eq!(counts["accepted"], 2);
        assert_eq!(counts["remembered"], 2);
        assert_eq!(counts["wrong"], 1);
        assert_eq!(counts["backoff"], 2);
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_ones() {
        let real = crate::password::hash_password("x").unwrap();
        let params = |phc: &str| phc.split('$').nth(3).unwrap().to_owned();
        assert_eq!(params(DUMMY_HASH), params(&real));
        assert!(crate::password::validate_hash(DUMMY_HASH).is_ok());
    }

    #[tokio::test]
    async fn unknown_usernames_cost_a_check_and_back_off_like_known_ones() {
        let (gate, hash) = gate(LoginLimits::default());
        // Warm the dummy hash so both timings below are of one check.
        gate.check(None, "nobody", "x".into(), None).await;
        tokio::time::sleep(BACKOFF_FIRST * 2).await;
        let started = Instant::now();
        assert_eq!(
            gate.check(None, "ghost", "x".into(), None).await,
            Verdict::Wrong
        );
        let unknown = started.elapsed();
        assert_eq!(
            gate.check(None, "ghost", "x".into(), None).await,
            Verdict::Backoff
        );
        let started = Instant::now();
        assert_eq!(
            gate.check(None, "d1", "x".into(), Some(hash.clone())).await,
            Verdict::Wrong
        );
        let known = started.elapsed();
        assert_eq!(
            gate.check(None, "d1", "x".into(), Some(hash)).await,
            Verdict::Backoff
        );
        // Same order of cost (both run argon2; generous bound for a noisy machine).
        assert!(
            unknown * 4 > known && known * 4 > unknown,
            "{unknown:?} vs {known:?}"
        );
    }

    #[tokio::test]
    async fn checks_are_bounded_per_address_and_in_total() {
        let (gate, hash) = gate(LoginLimits::default());
        let gate = Arc::new(gate);
        // Ten at once from one address: four may wait or run, the others are refused.
        let verdicts = at_once(&gate, &hash, 10, |_| ip("10.0.0.1")).await;
        let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
        assert_eq!(busy, 10 - PER_IP_IN_FLIGHT as usize, "{verdicts:?}");
        // Twenty at once from twenty addresses, one check thread and three places in its
        // queue: three or four are checked (the thread may have taken one already), the
        // others are refused at once.
        let limits = LoginLimits {
            concurrency: 1,
            queue_max: 3,
            ..LoginLimits::default()
        };
        let (gate, hash) = gate_with(limits);
        let gate = Arc::new(gate);
        let verdicts = at_once(&gate, &hash, 20, |i| ip(&format!("10.0.1.{i}"))).await;
        let checked = verdicts.iter().filter(|v| **v == Verdict::Wrong).count();
        assert!((3..=4).contains(&checked), "{verdicts:?}");
    }

    /// `n` wrong logins started together, user `u{i}` from `from(i)`.
    async fn at_once(
        gate: &Arc<LoginGate>,
        hash: &str,
        n: usize,
        from: impl Fn(usize) -> Option<IpAddr>,
    ) -> Vec<Verdict> {
        let attempts: Vec<_> = (0..n)
            .map(|i| {
                let (gate, hash, ip) = (gate.clone(), hash.to_owned(), from(i));
                tokio::spawn(async move {
                    gate.check(ip, &format!("u{i}"), "no".into(), Some(hash))
                        .await
                })
            })
            .collect();
        let mut verdicts = Vec::new();
        for a in attempts {
            verdicts.push(a.await.unwrap());
        }
        verdicts
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_is_forgotten() {
        let mut table = HashMap::new();
        let now = Instant::now();
        let max = Duration::from_secs(1);
        for expected in [100, 200, 400, 800, 1000, 1000] {
            fail(&mut table, "k", now, max);
            assert_eq!(table["k"].until - now, Duration::from_millis(expected));
        }
        let later = now + max + FORGET_AFTER;
        fail(&mut table, "k", later, max);
        assert_eq!(table["k"].failures, 1);
    }
}
