//! `orderflow config` and configuration errors, through the real binary.

use std::path::Path;
use std::process::Command;

use crate::common::binary;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn orderflow(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ORDERFLOW_CONFIG")
        .current_dir(dir)
        .output()
        .expect("run orderflow");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `KafkaConfiguration` section of the seed's ASP.NET appsettings.json,
/// with the sections an ASP.NET app carries besides it.
const APPSETTINGS: &str = r#"{
  "Logging": { "LogLevel": { "Default": "Information", "Microsoft.AspNetCore": "Warning" } },
  "AllowedHosts": "*",
  "KafkaConfiguration": {
    "ServerUrl": "kafka-1:9092, kafka-2:9092,",
    "Orders": {
      "TopicName": "orders",
      "ConsumerGroup": "order-processing",
      "ConsumerName": "order-events-handler"
    }
  }
}"#;

#[test]
fn appsettings_json_and_env_overrides_make_the_effective_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("appsettings.json"), APPSETTINGS).expect("write");
    let run = orderflow(
        dir.path(),
        &["config", "--config", "appsettings.json"],
        &[
            ("KafkaConfiguration__Orders__TopicName", "orders-v2"),
            ("KAFKACONFIGURATION__ORDERS__PARTITIONS", "12"),
            (
                "Database__Url",
                "postgres://app:s3cret-pw@db.internal:5432/orders",
            ),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let effective: toml::Value = toml::from_str(&run.stdout).expect("TOML output");
    let kafka = &effective["KafkaConfiguration"];
    assert_eq!(
        kafka["ServerUrl"].as_str(),
        Some("kafka-1:9092,kafka-2:9092")
    );
    assert_eq!(kafka["Orders"]["TopicName"].as_str(), Some("orders-v2"));
    assert_eq!(
        kafka["Orders"]["ConsumerGroup"].as_str(),
        Some("order-processing")
    );
    assert_eq!(
        kafka["Orders"]["ConsumerName"].as_str(),
        Some("order-events-handler")
    );
    assert_eq!(kafka["Orders"]["Partitions"].as_integer(), Some(12));
    assert_eq!(kafka["Orders"]["ReplicationFactor"].as_integer(), Some(1));
    assert_eq!(
        effective["Database"]["Url"].as_str(),
        Some("postgres://app:***@db.internal:5432/orders")
    );
    assert!(!run.stdout.contains("s3cret-pw") && !run.stderr.contains("s3cret-pw"));
}

#[test]
fn the_committed_config_is_the_embedded_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    std::fs::copy(committed, dir.path().join("config.toml")).expect("copy");
    let run = orderflow(dir.path(), &["config"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let effective: toml::Value = toml::from_str(&run.stdout).expect("TOML output");
    assert_eq!(
        effective["KafkaConfiguration"]["ServerUrl"].as_str(),
        Some("embedded")
    );
    assert_eq!(
        effective["Database"]["Url"].as_str(),
        Some("sqlite://orderflow.db")
    );
}

/// Each malformed configuration stops the program with exit code 2 and one
/// line naming the key and where the value came from.
#[test]
fn malformed_configs_exit_2_naming_the_key() {
    // (file, content, environment, key named, source named)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "config.toml",
            "[KafkaConfiguration.Orders]\nTopicName = \"\"\n",
            &[],
            "KafkaConfiguration.Orders.TopicName",
            "config.toml",
        ),
        (
            "config.toml",
            "[KafkaConfiguration.Orders]\nPartitions = \"ten\"\n",
            &[],
            "KafkaConfiguration.Orders.Partitions",
            "config.toml",
        ),
        (
            "config.toml",
            "[KafkaConfiguration]\nServerUrl = \" , ,\"\n",
            &[],
            "KafkaConfiguration.ServerUrl",
            "config.toml",
        ),
        (
            "appsettings.json",
            r#"{"Database": {"Url": "mysql://root@db/orders"}}"#,
            &[],
            "Database.Url",
            "appsettings.json",
        ),
        (
            "config.toml",
            "",
            &[("Api__Listen", "everywhere:80")],
            "Api.Listen",
            "environment variable Api__Listen",
        ),
        (
            "config.toml",
            "",
            &[("KafkaConfiguration__Orders__ReplicationFactor", "0")],
            "KafkaConfiguration.Orders.ReplicationFactor",
            "environment variable",
        ),
        (
            "config.toml",
            "[KafkaConfiguration.Producer]\ncompression.typo = \"zstd\"\n",
            &[],
            "KafkaConfiguration.Producer.compression.typo: librdkafka has no such property",
            "config.toml",
        ),
        (
            "config.toml",
            "[KafkaConfiguration.Producer]\ncompression.type = \"snappy-ish\"\n",
            &[],
            "KafkaConfiguration.Producer.compression.type: librdkafka rejects it",
            "config.toml",
        ),
        (
            "appsettings.json",
            r#"{"KafkaConfiguration": {"Client": {"SecurityProtocol": "SASL_SSL"}}}"#,
            &[],
            "KafkaConfiguration.Client.security.protocol: is set by orderflow; \
             set KafkaConfiguration.Security.Protocol instead",
            "appsettings.json",
        ),
        (
            "config.toml",
            "",
            &[("KafkaConfiguration__Producer__MessageTimeoutMs", "5000")],
            "KafkaConfiguration.Producer.message.timeout.ms: is set by orderflow; \
             set KafkaConfiguration.MessageTimeoutMs instead",
            "environment variable KafkaConfiguration__Producer__message.timeout.ms",
        ),
    ];
    for (file, content, env, key, source) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(file), content).expect("write");
        let run = orderflow(dir.path(), &["--config", file, "config"], env);
        assert_eq!(run.code, Some(2), "{key}: {} {}", run.stdout, run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {key}: {}", run.stderr);
        assert!(
            lines[0].contains(key) && lines[0].contains(source),
            "{key} from {source}: {}",
            lines[0]
        );
    }
}

/// librdkafka properties show as set, credentials as `***`; the
/// environment overrides one property of the file's table.
#[test]
fn client_properties_show_in_the_effective_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        "[KafkaConfiguration.Producer]\n\
         compression.type = \"zstd\"\n\
         linger.ms = 5\n\
         [KafkaConfiguration.Client]\n\
         \"socket.keepalive.enable\" = true\n\
         \"ssl.keystore.password\" = \"k3ystore-s3cret\"\n",
    )
    .expect("write");
    let run = orderflow(
        dir.path(),
        &["config"],
        &[
            ("KafkaConfiguration__Producer__LingerMs", "20"),
            (
                "KafkaConfiguration__Consumer__SaslOauthbearerConfig",
                "principal=env-s3cret",
            ),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let effective: toml::Value = toml::from_str(&run.stdout).expect("TOML output");
    let kafka = &effective["KafkaConfiguration"];
    assert_eq!(kafka["Producer"]["compression.type"].as_str(), Some("zstd"));
    assert_eq!(kafka["Producer"]["linger.ms"].as_str(), Some("20"));
    assert_eq!(
        kafka["Client"]["socket.keepalive.enable"].as_bool(),
        Some(true)
    );
    assert_eq!(
        kafka["Client"]["ssl.keystore.password"].as_str(),
        Some("***")
    );
    assert_eq!(
        kafka["Consumer"]["sasl.oauthbearer.config"].as_str(),
        Some("***")
    );
    for secret in ["k3ystore-s3cret", "env-s3cret"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret}: {}",
            run.stdout
        );
    }
}

/// A malformed Service Bus connection string stops the program at start,
/// naming the missing part and never echoing the key.
#[test]
fn malformed_service_bus_connection_strings_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (connection, missing) in [
        (
            "SharedAccessKeyName=send;SharedAccessKey=s3cr3t-key",
            "Endpoint",
        ),
        (
            "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKey=s3cr3t-key",
            "SharedAccessKeyName",
        ),
        (
            "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=send",
            "SharedAccessKey",
        ),
    ] {
        let run = orderflow(
            dir.path(),
            &["all"],
            &[
                ("Fulfilment__Kind", "servicebus"),
                ("Fulfilment__ConnectionString", connection),
                ("Database__Url", "sqlite://never-created.db"),
            ],
        );
        assert_eq!(run.code, Some(2), "{missing}: {}", run.stderr);
        assert!(
            run.stderr.contains("Fulfilment.ConnectionString") && run.stderr.contains(missing),
            "{missing}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("s3cr3t-key"), "{}", run.stderr);
    }
    assert!(
        !dir.path().join("never-created.db").exists(),
        "nothing started"
    );

    let run = orderflow(
        dir.path(),
        &["config"],
        &[
            ("Fulfilment__Kind", "servicebus"),
            (
                "Fulfilment__ConnectionString",
                "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=s3cr3t-key",
            ),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("ConnectionString = \"***\""),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("s3cr3t-key"));
}

#[test]
fn a_missing_or_broken_config_file_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = orderflow(dir.path(), &["--config", "nope.toml", "config"], &[]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("nope.toml"), "{}", run.stderr);

    std::fs::write(
        dir.path().join("bad.toml"),
        "[KafkaConfiguration\nServerUrl = 1",
    )
    .expect("write");
    let run = orderflow(dir.path(), &["--config", "bad.toml", "config"], &[]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("bad.toml"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

/// A token named in the configuration but given no value stops the API
/// role (exit 2, naming the key), not the roles that never check tokens.
#[test]
fn unset_api_tokens_stop_only_the_api_role() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        "[Api.Auth]\nEnabled = true\n[Api.Auth.Tokens.ops]\nScopes = [\"admin\"]\n",
    )
    .expect("write");
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let env = [("Database__Url", db.as_str())];
    let migrate = orderflow(dir.path(), &["migrate"], &env);
    assert_eq!(migrate.code, Some(0), "{}", migrate.stderr);
    for role in ["serve-api", "all"] {
        let run = orderflow(dir.path(), &[role], &env);
        assert_eq!(run.code, Some(2), "{role}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("Api.Auth.Tokens.ops.Token: is not set (the API role needs a value"),
            "{role}: {}",
            run.stderr
        );
    }
    // Too short a token is wrong for every role.
    let short = orderflow(
        dir.path(),
        &["migrate"],
        &[
            ("Database__Url", db.as_str()),
            ("Api__Auth__Tokens__ops__Token", "short"),
        ],
    );
    assert_eq!(short.code, Some(2));
    assert!(
        short
            .stderr
            .contains("Api.Auth.Tokens.ops.Token: must be at least 16 characters"),
        "{}",
        short.stderr
    );
    assert!(!short.stderr.contains("short ("), "{}", short.stderr);
}

/// Each role's pods are given only the secrets that role uses (the Helm
/// chart does): the migrate Job only the database URL, the API no Service
/// Bus connection string, the worker no API token. Every role still starts
/// with what it is given, and a secret a role does use stops it, exit 2,
/// naming the key, before it touches anything.
#[test]
fn each_role_needs_only_the_secrets_it_uses() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        "[KafkaConfiguration]\nServerUrl = \"127.0.0.1:9\"\n\
         [KafkaConfiguration.Security]\nProtocol = \"SASL_PLAINTEXT\"\n\
         SaslMechanism = \"SCRAM-SHA-512\"\n\
         [Fulfilment]\nKind = \"servicebus\"\nQueue = \"fulfilments\"\n\
         [Api.Auth]\nEnabled = true\n[Api.Auth.Tokens.shop]\nScopes = [\"orders:read\"]\n",
    )
    .expect("write");
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let database = ("Database__Url", db.as_str());
    let kafka = [
        ("KafkaConfiguration__Security__Username", "orderflow"),
        ("KafkaConfiguration__Security__Password", "kafka-s3cret"),
    ];

    let migrate = orderflow(dir.path(), &["migrate"], &[database]);
    assert_eq!(migrate.code, Some(0), "migrate: {}", migrate.stderr);
    let shown = orderflow(dir.path(), &["config"], &[database]);
    assert_eq!(shown.code, Some(0), "config: {}", shown.stderr);

    let refused = |args: &[&str], env: &[(&str, &str)], key: &str| {
        let run = orderflow(dir.path(), args, env);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .starts_with(&format!("orderflow: configuration error: {key}: ")),
            "{args:?} should name {key}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("kafka-s3cret"), "{}", run.stderr);
    };
    for role in ["serve-api", "run-worker", "all"] {
        refused(&[role], &[database], "KafkaConfiguration.Security.Username");
    }
    refused(
        &["dlq", "list"],
        &[database],
        "KafkaConfiguration.Security.Username",
    );
    refused(
        &["serve-api"],
        &[database, kafka[0]],
        "KafkaConfiguration.Security.Password",
    );
    // With the Kafka credentials: the API still needs its token (and not
    // the connection string), the worker the connection string (and not
    // the token).
    let api = [database, kafka[0], kafka[1]];
    refused(&["serve-api"], &api, "Api.Auth.Tokens.shop.Token");
    refused(&["run-worker"], &api, "Fulfilment.ConnectionString");
}

/// Lists set from the environment, as Kubernetes manifests for ASP.NET
/// services set them: comma-separated, a JSON array, or one variable per
/// item. A list that cannot be read stops the program naming the variable,
/// in the configuration's terms rather than serde's.
#[test]
fn lists_from_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "0123456789abcdef-token";
    let run = orderflow(
        dir.path(),
        &["config"],
        &[
            ("Api__Auth__Tokens__shop__Token", token),
            (
                "Api__Auth__Tokens__shop__Scopes",
                "orders:read,orders:write",
            ),
            ("Api__Auth__Tokens__ops__Token", token),
            ("Api__Auth__Tokens__ops__Scopes__0", "admin"),
            ("Api__Auth__AnonymousPaths", r#"["/healthz", "/metrics"]"#),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let effective: toml::Value = toml::from_str(&run.stdout).expect("TOML output");
    let auth = &effective["Api"]["Auth"];
    let list = |v: &toml::Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        list(&auth["Tokens"]["shop"]["Scopes"]),
        ["orders:read", "orders:write"]
    );
    assert_eq!(list(&auth["Tokens"]["ops"]["Scopes"]), ["admin"]);
    assert_eq!(list(&auth["AnonymousPaths"]), ["/healthz", "/metrics"]);

    let run = orderflow(
        dir.path(),
        &["config"],
        &[("Api__Auth__Tokens__shop__Scopes", "[orders:read")],
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Api.Auth.Tokens.shop.Scopes: expected a list")
            && run
                .stderr
                .contains("(environment variable Api__Auth__Tokens__shop__Scopes)"),
        "{}",
        run.stderr
    );
    for jargon in ["untagged", "Either", "invalid type", "sequence"] {
        assert!(!run.stderr.contains(jargon), "{jargon}: {}", run.stderr);
    }
}
