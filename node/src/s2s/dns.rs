//! Where a remote domain's server is (RFC 6120 §3.2): its
//! `_xmpp-server._tcp` SRV records in priority order (weight breaking
//! ties, heavier first), else the domain itself on port 5269. A single
//! record whose target is "." says the domain offers no service.

use crate::server::Server;

/// The (host, port) targets to try, in order.
pub async fn targets(server: &Server, domain: &str) -> Vec<(String, u16)> {
    let resolver = server.s2s.resolver.get_or_init(|| {
        match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(mut b) => {
                // A domain that does not resolve must bounce within the
                // connect timeout, not after the resolver's retries.
                let opts = b.options_mut();
                opts.timeout = std::time::Duration::from_secs(3);
                opts.attempts = 1;
                Some(b.build())
            }
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver configuration; only [s2s] hosts are reached");
                None
            }
        }
    });
    let Some(resolver) = resolver else {
        return Vec::new();
    };
    let name = format!("_xmpp-server._tcp.{domain}.");
    match resolver.srv_lookup(name).await {
        Ok(found) => {
            let mut records: Vec<(u16, u16, String, u16)> = found
                .iter()
                .map(|r| {
                    let target = r.target().to_utf8();
                    let target = target.trim_end_matches('.').to_owned();
                    (r.priority(), r.weight(), target, r.port())
                })
                .collect();
            if records.len() == 1 && records[0].2.is_empty() {
                return Vec::new();
            }
            records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            records
                .into_iter()
                .filter(|r| !r.2.is_empty())
                .map(|r| (r.2, r.3))
                .collect()
        }
        // No records (or no answer): the domain itself (§3.2.2).
        Err(e) => {
            tracing::debug!(%domain, error = %e, "no SRV records; trying the domain on 5269");
            vec![(domain.to_owned(), 5269)]
        }
    }
}
