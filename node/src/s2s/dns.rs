//! Where a remote domain's server is (RFC 6120 §3.2, XEP-0368): its
//! `_xmpps-server._tcp` (direct TLS) and `_xmpp-server._tcp` (STARTTLS)
//! SRV records, merged in priority order (weight breaking ties, heavier
//! first; direct TLS first among equals), else the domain itself on port
//! 5269 with STARTTLS. A single record whose target is "." says the domain
//! offers no service of that kind.

use crate::server::Server;

/// A place to try: direct TLS (XEP-0368) or STARTTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub direct_tls: bool,
}

/// The targets to try, in order.
pub async fn targets(server: &Server, domain: &str) -> Vec<Target> {
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
    let lookup = |service: &'static str| {
        let name = format!("{service}.{domain}.");
        async move {
            match resolver.srv_lookup(name).await {
                Ok(found) => Some(
                    found
                        .iter()
                        .map(|r| {
                            let target = r.target().to_utf8();
                            let target = target.trim_end_matches('.').to_owned();
                            (r.priority(), r.weight(), target, r.port())
                        })
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    tracing::debug!(%domain, service, error = %e, "no SRV records");
                    None
                }
            }
        }
    };
    let (direct, starttls) =
        tokio::join!(lookup("_xmpps-server._tcp"), lookup("_xmpp-server._tcp"));
    merge(domain, direct, starttls)
}

/// The two SRV answers (`None`: no records) as the targets to try.
fn merge(
    domain: &str,
    direct: Option<Vec<(u16, u16, String, u16)>>,
    starttls: Option<Vec<(u16, u16, String, u16)>>,
) -> Vec<Target> {
    if direct.is_none() && starttls.is_none() {
        // No records: the domain itself (RFC 6120 §3.2.2).
        return vec![Target {
            host: domain.to_owned(),
            port: 5269,
            direct_tls: false,
        }];
    }
    // (priority, weight, direct first, target)
    let mut all: Vec<(u16, u16, bool, Target)> = Vec::new();
    for (records, direct_tls) in [(direct, true), (starttls, false)] {
        let records = records.unwrap_or_default();
        // "." alone: no such service.
        if records.len() == 1 && records[0].2.is_empty() {
            continue;
        }
        all.extend(records.into_iter().filter(|r| !r.2.is_empty()).map(
            |(prio, weight, host, port)| {
                (
                    prio,
                    weight,
                    direct_tls,
                    Target {
                        host,
                        port,
                        direct_tls,
                    },
                )
            },
        ));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)).then(b.1.cmp(&a.1)));
    all.into_iter().map(|r| r.3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, direct_tls: bool) -> Target {
        Target {
            host: host.into(),
            port,
            direct_tls,
        }
    }

    #[test]
    fn merged_by_priority_direct_tls_first_among_equals() {
        let direct = Some(vec![
            (10, 0, "tls.d".into(), 5270),
            (20, 0, "tls2.d".into(), 443),
        ]);
        let starttls = Some(vec![
            (10, 5, "s.d".into(), 5269),
            (5, 0, "first.d".into(), 5269),
        ]);
        assert_eq!(
            merge("d", direct, starttls),
            vec![
                t("first.d", 5269, false),
                t("tls.d", 5270, true),
                t("s.d", 5269, false),
                t("tls2.d", 443, true)
            ]
        );
    }

    #[test]
    fn no_records_or_no_service() {
        assert_eq!(merge("d", None, None), vec![t("d", 5269, false)]);
        let none = Some(vec![(0, 0, String::new(), 0)]);
        assert!(merge("d", None, none.clone()).is_empty());
        assert_eq!(
            merge("d", Some(vec![(0, 0, "x.d".into(), 5270)]), none),
            vec![t("x.d", 5270, true)]
        );
    }
}
