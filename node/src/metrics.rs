//! Metric names and descriptions. Components record through the `metrics`
//! facade; names follow `starling_<component>_<thing>_<unit>`.

pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "starling_c2s_sessions",
        "Bound client sessions on this node"
    );
    describe_counter!(
        "starling_c2s_connections_total",
        "Accepted client TCP connections"
    );
    describe_counter!(
        "starling_c2s_stanzas_received_total",
        "Stanzas received from clients, by kind"
    );
    describe_counter!(
        "starling_c2s_stream_errors_total",
        "Streams ended with a stream error, by condition"
    );
    describe_counter!(
        "starling_c2s_bytes_received_total",
        "Bytes read from client connections"
    );
    describe_counter!("starling_stanzas_routed_total", "Stanzas routed, by kind");
    describe_gauge!(
        "starling_components_connected",
        "XEP-0114 component connections on this node"
    );
    describe_counter!(
        "starling_component_handshakes_total",
        "XEP-0114 component logins, by result"
    );
    describe_counter!(
        "starling_component_stanzas_received_total",
        "Stanzas received from components, by kind"
    );
    describe_counter!(
        "starling_component_stanzas_sent_total",
        "Stanzas handed to a component connection"
    );
    describe_counter!(
        "starling_component_unavailable_total",
        "Stanzas for a component that was not connected, answered with service-unavailable"
    );
    describe_counter!(
        "starling_upload_files_total",
        "Files uploaded through this node (XEP-0363)"
    );
    describe_counter!(
        "starling_upload_fetches_total",
        "Uploaded files fetched from the node holding them, by result"
    );
    describe_counter!(
        "starling_router_delivered_total",
        "Stanzas queued to a local session"
    );
    describe_counter!(
        "starling_router_mailbox_full_total",
        "Deliveries refused because a session's mailbox was full"
    );
    describe_counter!(
        "starling_auth_success_total",
        "Successful SASL authentications, by mechanism"
    );
    describe_counter!(
        "starling_auth_failures_total",
        "Failed SASL authentications, by mechanism"
    );
    describe_counter!(
        "starling_offline_stored_total",
        "Messages stored for offline users"
    );
    describe_counter!(
        "starling_offline_quota_full_total",
        "Messages refused because offline storage was full"
    );
    describe_counter!(
        "starling_offline_cleared_by_bind2_total",
        "Archived offline messages dropped at a XEP-0386 bind (the client reads them from its archive)"
    );
    describe_counter!(
        "starling_offline_rechecked_total",
        "Messages taken back out of offline storage by their sender because the user became available meanwhile"
    );
    describe_counter!(
        "starling_mam_archived_total",
        "Message copies written to user archives (XEP-0313)"
    );
    metrics::describe_histogram!(
        "starling_mam_write_seconds",
        metrics::Unit::Seconds,
        "Time to write a message's archive copies (one durable write, before delivery)"
    );
    describe_counter!("starling_mam_queries_total", "Archive queries answered");
    describe_counter!(
        "starling_mam_retention_deleted_total",
        "Archived messages deleted by retention passes"
    );
    describe_counter!(
        "starling_carbons_copies_total",
        "XEP-0280 carbon copies sent, by direction (sent, received)"
    );
    describe_counter!(
        "starling_carbons_forged_total",
        "Messages refused because their client wrapped them as carbons"
    );
    describe_counter!(
        "starling_csi_presence_held_total",
        "Presence stanzas held back from inactive clients (XEP-0352)"
    );
    describe_counter!(
        "starling_csi_presence_superseded_total",
        "Held presence stanzas replaced by a newer one from the same sender"
    );
    describe_counter!(
        "starling_csi_flushes_total",
        "Times an inactive client's held presence was sent"
    );
    // Emit the session gauge at zero so dashboards see it from the start.
    metrics::gauge!("starling_c2s_sessions").set(0.0);
    metrics::counter!("starling_auth_failures_total", "mechanism" => "PLAIN").absolute(0);
}

/// A counter looked up once per call site. `metrics::counter!` hashes its
/// name and labels into the registry on every call, which per stanza adds
/// up. The recorder is installed before any session runs (`run::serve`);
/// where none is, the cached counter records nothing, like the macro.
#[macro_export]
macro_rules! hot_counter {
    ($name:literal $(, $k:literal => $v:literal)*) => {{
        static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        COUNTER.get_or_init(|| metrics::counter!($name $(, $k => $v)*))
    }};
}
