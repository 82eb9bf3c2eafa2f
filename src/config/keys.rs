//! How keys are named in messages: their canonical spelling, and the file
//! or environment variable a value came from.

use figment::Metadata;

use super::properties;

/// Canonical spelling of every key segment, for messages.
fn canonical(segment: &str) -> &str {
    const NAMES: &[&str] = &[
        "KafkaConfiguration",
        "ServerUrl",
        "MessageTimeoutMs",
        "Orders",
        "TopicName",
        "ConsumerGroup",
        "ConsumerName",
        "Partitions",
        "ReplicationFactor",
        "Database",
        "Url",
        "MaxConnections",
        "Api",
        "Listen",
        "MaxBodyBytes",
        "MaxItemsPerOrder",
        "Worker",
        "AdminListen",
        "Outbox",
        "BatchSize",
        "PollIntervalMs",
        "MaxBackoffMs",
        "RetentionSeconds",
        "BufferSize",
        "MinWorkers",
        "MaxWorkers",
        "LagThreshold",
        "DistributionStrategy",
        "CommitIntervalMs",
        "BalanceIntervalMs",
        "SessionTimeoutMs",
        "FetchWaitMaxMs",
        "DeadLetterTopic",
        "UnknownTypes",
        "Retry",
        "MaxAttempts",
        "InitialBackoffMs",
        "Notifier",
        "Kind",
        "Fulfilment",
        "Topic",
        "ConnectionString",
        "Queue",
        "Admin",
        "Enabled",
        "ControlTopic",
        "Security",
        "Protocol",
        "SaslMechanism",
        "Username",
        "Password",
        "CaFile",
        "CertificateFile",
        "KeyFile",
        "KeyPassword",
        "EndpointIdentification",
        "SslMode",
        "SslRootCert",
        "RequestTimeoutMs",
        "MaxConcurrentRequests",
        "RateLimit",
        "PerSecond",
        "Burst",
        "Auth",
        "Tokens",
        "Token",
        "Scopes",
        "Jwt",
        "Issuer",
        "Audience",
        "JwksFile",
        "JwksUrl",
        "AnonymousPaths",
        "Client",
        "Producer",
        "Consumer",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(&segment.replace('_', "")))
        .copied()
        .unwrap_or(segment)
}

/// Key segments as messages spell them. librdkafka property names are
/// free-form and stay as they are, whatever our key list holds.
fn canonical_segments(path: &[String]) -> Vec<&str> {
    let in_table = path.len() > 2 && properties::is_table(&path[..2]);
    path.iter()
        .enumerate()
        .map(|(i, s)| match in_table && i >= 2 {
            true => s.as_str(),
            false => canonical(s),
        })
        .collect()
}

pub(super) fn canonical_key(path: &[String]) -> String {
    canonical_segments(path).join(".")
}

pub(super) fn source_name(metadata: Option<&Metadata>, path: &[String]) -> String {
    match metadata {
        None => "built-in default".into(),
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => {
                let key = canonical_segments(path).join("__");
                format!("{} {key}", md.name)
            }
        },
    }
}
