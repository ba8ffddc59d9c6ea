//! Connection shaping for login storms: this node takes new connections at
//! the rate it can serve them rather than all at once.
//!
//! Two token buckets, each refilled at its rate with a burst of one
//! second's worth: one for the node (the accept loop waits for a token, so
//! a storm queues in the kernel's listen backlog and clients retry, instead
//! of every handshake slowing down together), one per client address (an
//! address over its rate is refused with `<policy-violation/>`). Both off
//! by default (`c2s.connect_rate`, `c2s.connect_rate_per_ip`).

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32) -> Self {
        Bucket {
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one; otherwise how long until there is.
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The node's and the addresses' buckets.
#[derive(Debug)]
pub struct Shaper {
    rate: u32,
    per_ip: u32,
    node: Mutex<Bucket>,
    addresses: DashMap<IpAddr, Bucket>,
}

/// Addresses remembered before the idle ones are forgotten.
const MAX_ADDRESSES: usize = 100_000;

impl Shaper {
    pub fn new(rate: u32, per_ip: u32) -> Self {
        Shaper {
            rate,
            per_ip,
            node: Mutex::new(Bucket::full(rate)),
            addresses: DashMap::new(),
        }
    }

    /// Waits until the node may take one more connection.
    pub async fn admit_node(&self) {
        if self.rate == 0 {
            return;
        }
        let mut shaped = false;
        loop {
            let wait = self
                .node
                .lock()
                .expect("shaper lock")
                .take(self.rate, Instant::now());
            match wait {
                Ok(()) => return,
                Err(pause) => {
                    if !shaped {
                        shaped = true;
                        metrics::counter!("starling_c2s_shaped_total", "reason" => "node")
                            .increment(1);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Whether `ip` may open one more connection now.
    pub fn admit_address(&self, ip: IpAddr) -> bool {
        if self.per_ip == 0 {
            return true;
        }
        let now = Instant::now();
        if self.addresses.len() > MAX_ADDRESSES {
            // An address whose bucket is full again is as good as new.
            let full = Duration::from_secs(1);
            self.addresses
                .retain(|_, b| now.saturating_duration_since(b.at) < full);
        }
        let ok = self
            .addresses
            .entry(ip)
            .or_insert_with(|| Bucket::full(self.per_ip))
            .take(self.per_ip, now)
            .is_ok();
        if !ok {
            metrics::counter!("starling_c2s_shaped_total", "reason" => "address").increment(1);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            at: t0,
        };
        for _ in 0..3 {
            assert!(b.take(3, t0).is_ok());
        }
        let wait = b.take(3, t0).unwrap_err();
        assert!(wait > Duration::from_millis(300) && wait <= Duration::from_millis(334));
        // A third of a second later, one more.
        assert!(b.take(3, t0 + Duration::from_millis(340)).is_ok());
        assert!(b.take(3, t0 + Duration::from_millis(340)).is_err());
        // Never more than the burst saved up.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(3, later).is_ok());
        }
        assert!(b.take(3, later).is_err());
    }

    #[test]
    fn addresses_have_their_own_buckets() {
        let s = Shaper::new(0, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(s.admit_address(a) && s.admit_address(a));
        assert!(
            !s.admit_address(a),
            "a third connection at once from one address"
        );
        assert!(s.admit_address(b), "another address is not held back");
        assert!(Shaper::new(0, 0).admit_address(a), "0 means no limit");
    }
}
