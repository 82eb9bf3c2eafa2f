//! Loading whole configurations: files, environment, and their errors.

use super::*;

fn load(file: &str, ext: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("config.{ext}"));
    std::fs::write(&path, file).expect("write config");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_with_env(
        &ConfigSource {
            path,
            required: true,
        },
        env,
    )
}

#[test]
fn keys_match_case_insensitively_and_env_wins() {
    let cfg = load(
        "[kafkaconfiguration]\nSERVERURL = \"a:1\"\n[KafkaConfiguration.orders]\ntopicName = \"t1\"\n",
        "toml",
        &[("KAFKACONFIGURATION__Orders__Partitions", "12")],
    )
    .expect("valid");
    assert_eq!(cfg.kafka.servers, KafkaServers::Brokers(vec!["a:1".into()]));
    assert_eq!(cfg.kafka.orders.name, "t1");
    assert_eq!(cfg.kafka.orders.partitions, 12);
}

#[test]
fn errors_name_key_and_source() {
    let err = load("[Api]\nListen = \"nowhere\"\n", "toml", &[])
        .expect_err("invalid listen")
        .to_string();
    assert!(err.starts_with("Api.Listen: "), "{err}");
    assert!(err.ends_with("config.toml)"), "{err}");

    let err = load(
        "",
        "toml",
        &[("KafkaConfiguration__Orders__Partitions", "0")],
    )
    .expect_err("zero partitions")
    .to_string();
    assert!(
        err.contains("KafkaConfiguration.Orders.Partitions")
            && err.contains("environment variable"),
        "{err}"
    );
}

#[test]
fn secrets_stay_verbatim_and_never_show() {
    let cfg = load(
        "",
        "toml",
        &[
            ("Api__Auth__Enabled", "true"),
            ("Api__Auth__Tokens__ci__Token", "0001234567890123456"),
            ("Api__Auth__Tokens__ci__Scopes", "orders:read,orders:write"),
            ("KafkaConfiguration__ServerUrl", "b:9093"),
            ("KafkaConfiguration__Security__Protocol", "SASL_SSL"),
            ("KafkaConfiguration__Security__Username", "key"),
            ("KafkaConfiguration__Security__Password", "[not-a-list]"),
            ("Database__Url", "postgres://u:pw-in-url@db/orders"),
        ],
    )
    .expect("valid");
    let token = &cfg.api.auth.tokens[0];
    assert_eq!(token.token.expose(), "0001234567890123456");
    assert_eq!(token.scopes.len(), 2);
    let sasl = cfg.kafka.security.sasl.as_ref().expect("sasl");
    assert_eq!(sasl.password.expose(), "[not-a-list]");
    let shown = format!("{}\n{cfg:?}", cfg.to_redacted_toml());
    for secret in ["0001234567890123456", "[not-a-list]", "pw-in-url"] {
        assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
    }
    assert!(shown.contains("Password = \"***\""), "{shown}");
}

fn plain(v: &str) -> Option<PropertyValue> {
    Some(PropertyValue::Plain(v.into()))
}

#[test]
fn property_tables_parse_from_toml() {
    let cfg = load(
        "[KafkaConfiguration.Producer]\n\
         compression.type = \"lz4\"\n\
         linger.ms = 5\n\
         \"batch.num.messages\" = 1000\n\
         [kafkaconfiguration.client]\n\
         socket.keepalive.enable = true\n\
         [KafkaConfiguration.Consumer]\n\
         FetchMinBytes = 2\n",
        "toml",
        &[],
    )
    .expect("valid");
    let p = &cfg.kafka.properties;
    assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
    assert_eq!(p.producer.get("linger.ms").cloned(), plain("5"));
    assert_eq!(p.producer.get("batch.num.messages").cloned(), plain("1000"));
    assert_eq!(
        p.client.get("socket.keepalive.enable").cloned(),
        plain("true")
    );
    assert_eq!(p.consumer.get("fetch.min.bytes").cloned(), plain("2"));
    assert_eq!(p.consumer.0.len(), 1);
}

#[test]
fn property_tables_parse_from_json_in_dotnet_spelling() {
    let cfg = load(
        r#"{"KafkaConfiguration": {
            "Producer": {"CompressionType": "lz4", "LingerMs": 5, "compression": {"level": 3}},
            "Client": {"SocketKeepaliveEnable": true, "ReconnectBackoffMs": 50}
        }}"#,
        "json",
        &[],
    )
    .expect("valid");
    let p = &cfg.kafka.properties;
    assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
    assert_eq!(p.producer.get("linger.ms").cloned(), plain("5"));
    assert_eq!(p.producer.get("compression.level").cloned(), plain("3"));
    assert_eq!(
        p.client.get("socket.keepalive.enable").cloned(),
        plain("true")
    );
    assert_eq!(p.client.get("reconnect.backoff.ms").cloned(), plain("50"));
}

#[test]
fn dotnet_property_names_map_to_librdkafka_names() {
    for (raw, name) in [
        ("CompressionType", "compression.type"),
        ("SaslOauthbearerClientId", "sasl.oauthbearer.client.id"),
        ("lingerMs", "linger.ms"),
        ("compression.type", "compression.type"),
        ("COMPRESSION.TYPE", "compression.type"),
        ("SSLCaLocation", "ssl.ca.location"),
        ("debug", "debug"),
    ] {
        assert_eq!(property_name(raw), name, "{raw}");
    }
    assert_eq!(Scalar::Float(0.5).to_string(), "0.5");
    assert_eq!(Scalar::Bool(false).to_string(), "false");
}

#[test]
fn environment_overrides_properties_one_by_one() {
    let cfg = load(
        "[KafkaConfiguration.Producer]\ncompression.type = \"lz4\"\nlinger.ms = 5\n",
        "toml",
        &[
            ("KafkaConfiguration__Producer__linger.ms", "10"),
            ("KAFKACONFIGURATION__PRODUCER__BatchNumMessages", "500"),
            ("KafkaConfiguration__Producer__compression__level", "4"),
            (
                "KafkaConfiguration__Client__TopicMetadataRefreshIntervalMs",
                "60000",
            ),
        ],
    )
    .expect("valid");
    let p = &cfg.kafka.properties;
    assert_eq!(p.producer.get("linger.ms").cloned(), plain("10"));
    assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
    assert_eq!(p.producer.get("batch.num.messages").cloned(), plain("500"));
    assert_eq!(p.producer.get("compression.level").cloned(), plain("4"));
    assert_eq!(
        p.client.get("topic.metadata.refresh.interval.ms").cloned(),
        plain("60000")
    );
}

#[test]
fn unknown_properties_and_rejected_values_name_key_and_source() {
    let err = load(
        "[KafkaConfiguration.Producer]\ncompression.typo = \"lz4\"\n",
        "toml",
        &[],
    )
    .expect_err("unknown property")
    .to_string();
    assert!(
        err.starts_with(
            "KafkaConfiguration.Producer.compression.typo: librdkafka has no such property ("
        ) && err.ends_with("config.toml)"),
        "{err}"
    );

    let err = load(
        "",
        "toml",
        &[("KafkaConfiguration__Consumer__FetchWaitMaxxMs", "1")],
    )
    .expect_err("unknown property from env")
    .to_string();
    assert_eq!(
        err,
        "KafkaConfiguration.Consumer.fetch.wait.maxx.ms: librdkafka has no such property \
         (environment variable KafkaConfiguration__Consumer__fetch.wait.maxx.ms)"
    );

    let err = load(
        "[KafkaConfiguration.Client]\n\"compression.type\" = \"snappy-ish\"\n",
        "toml",
        &[],
    )
    .expect_err("bad value")
    .to_string();
    assert!(
        err.starts_with("KafkaConfiguration.Client.compression.type: librdkafka rejects it: ")
            && err.contains("snappy-ish")
            && err.ends_with("config.toml)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let err = load(
        "",
        "toml",
        &[("KafkaConfiguration__Client__ssl.keystore.password", "pw\0x")],
    )
    .expect_err("a secret librdkafka cannot take")
    .to_string();
    assert!(
        err.contains("ssl.keystore.password: librdkafka rejects its value"),
        "{err}"
    );
    assert!(!err.contains("pw"), "{err}");
}

#[test]
fn owned_properties_name_the_key_to_use() {
    for (table, name, owner) in [
        (
            "Producer",
            "message.timeout.ms",
            "KafkaConfiguration.MessageTimeoutMs",
        ),
        ("Consumer", "session.timeout.ms", "Worker.SessionTimeoutMs"),
        (
            "Client",
            "security.protocol",
            "KafkaConfiguration.Security.Protocol",
        ),
        (
            "Client",
            "sasl.password",
            "KafkaConfiguration.Security.Password",
        ),
        (
            "Client",
            "bootstrap.servers",
            "KafkaConfiguration.ServerUrl",
        ),
        (
            "Consumer",
            "group.id",
            "KafkaConfiguration.Orders.ConsumerGroup",
        ),
    ] {
        let err = load(
            &format!("[KafkaConfiguration.{table}]\n\"{name}\" = \"1\"\n"),
            "toml",
            &[],
        )
        .expect_err(name)
        .to_string();
        assert!(
            err.starts_with(&format!(
                "KafkaConfiguration.{table}.{name}: is set by orderflow; set {owner} instead ("
            )),
            "{err}"
        );
    }
    for (name, value) in [
        ("enable.idempotence", "false"),
        ("acks", "1"),
        ("enable.auto.commit", "true"),
        ("auto.offset.reset", "latest"),
        ("EnableAutoOffsetStore", "true"),
    ] {
        let var = format!("KafkaConfiguration__Client__{name}");
        let err = load("", "toml", &[(var.as_str(), value)])
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(": is set by orderflow; ") && err.contains("environment variable"),
            "{err}"
        );
    }
}

#[test]
fn secret_properties_never_show() {
    let cfg = load(
        "[KafkaConfiguration.Client]\n\
         sasl.oauthbearer.config = \"principal=s3cr3t-in-file\"\n\
         client.rack = \"rack-1\"\n\
         [KafkaConfiguration.Producer]\n\
         compression.type = \"lz4\"\n",
        "toml",
        &[(
            "KafkaConfiguration__Consumer__SslKeystorePassword",
            "007-from-env",
        )],
    )
    .expect("valid");
    let p = &cfg.kafka.properties;
    match p.client.get("sasl.oauthbearer.config") {
        Some(PropertyValue::Secret(s)) => assert_eq!(s.expose(), "principal=s3cr3t-in-file"),
        other => panic!("not a secret: {other:?}"),
    }
    match p.consumer.get("ssl.keystore.password") {
        Some(PropertyValue::Secret(s)) => assert_eq!(s.expose(), "007-from-env"),
        other => panic!("not a secret: {other:?}"),
    }
    let toml_text = cfg.to_redacted_toml();
    let shown: toml::Value = toml::from_str(&toml_text).expect("TOML");
    let kafka = &shown["KafkaConfiguration"];
    assert_eq!(
        kafka["Client"]["sasl.oauthbearer.config"].as_str(),
        Some("***")
    );
    assert_eq!(kafka["Client"]["client.rack"].as_str(), Some("rack-1"));
    assert_eq!(kafka["Producer"]["compression.type"].as_str(), Some("lz4"));
    assert_eq!(
        kafka["Consumer"]["ssl.keystore.password"].as_str(),
        Some("***")
    );
    let everything = format!("{toml_text}\n{cfg:?}");
    for secret in ["s3cr3t-in-file", "007-from-env"] {
        assert!(!everything.contains(secret), "{secret} in:\n{everything}");
    }
}

/// librdkafka must be built with zstd: without it, setting
/// `compression.type = zstd` fails.
#[test]
fn a_producer_with_the_producer_table_and_zstd_is_created() {
    let cfg = load(
        "[KafkaConfiguration]\nServerUrl = \"127.0.0.1:9\"\n\
         [KafkaConfiguration.Producer]\ncompression.type = \"zstd\"\nlinger.ms = 7\n\
         [KafkaConfiguration.Client]\nsocket.keepalive.enable = true\n\
         [KafkaConfiguration.Consumer]\nfetch.min.bytes = 3\n",
        "toml",
        &[],
    )
    .expect("valid");
    let brokers = crate::brokers::Brokers::configured(&cfg.kafka).expect("brokers");
    let _producer = brokers
        .producer("orderflow-test", cfg.kafka.message_timeout)
        .expect("zstd producer");
    let client = brokers.client_config("orderflow-test");
    assert_eq!(client.get("socket.keepalive.enable"), Some("true"));
    assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9"));
    assert_eq!(client.get("fetch.min.bytes"), None);
    let consumer = brokers.consumer_config("orderflow-test");
    assert_eq!(consumer.get("fetch.min.bytes"), Some("3"));
    assert_eq!(consumer.get("socket.keepalive.enable"), Some("true"));
}

#[test]
fn the_embedded_cluster_gets_the_tables_too() {
    let cfg = load(
        "[KafkaConfiguration.Consumer]\nfetch.min.bytes = 3\n",
        "toml",
        &[],
    )
    .expect("valid");
    let (brokers, embedded) = crate::brokers::Brokers::resolve(&cfg.kafka, &[]).expect("embedded");
    assert!(embedded.is_some());
    assert_eq!(
        brokers
            .consumer_config("orderflow-test")
            .get("fetch.min.bytes"),
        Some("3")
    );
}

const TOKEN: &str = "0123456789abcdef";

/// What serde or figment would say in Rust's terms; a message says what
/// the key takes instead.
fn assert_plain(message: &str) {
    for jargon in [
        "invalid type",
        "invalid value",
        "untagged",
        "Either",
        "variant",
        "sequence",
        "struct",
        "u32",
        "u64",
        "i64",
        "map",
    ] {
        assert!(!message.contains(jargon), "{jargon:?} in: {message}");
    }
}

/// The message, checked for serde's jargon, with the temporary directory
/// dropped from the file's path.
fn message(result: Result<Config, ConfigError>) -> String {
    let err = result.expect_err("invalid").to_string();
    assert_plain(&err);
    match (err.rfind(" (/"), err.rfind('/')) {
        (Some(open), Some(slash)) if err.ends_with(')') => {
            format!("{} ({}", &err[..open], &err[slash + 1..])
        }
        _ => err,
    }
}

#[test]
fn lists_from_env_are_comma_separated() {
    let cfg = load(
        "",
        "toml",
        &[
            ("Api__Auth__Tokens__shop__Token", TOKEN),
            (
                "Api__Auth__Tokens__shop__Scopes",
                "orders:read, orders:write",
            ),
            ("Api__Auth__Tokens__ops__Token", TOKEN),
            ("Api__Auth__Tokens__ops__Scopes", "admin"),
            ("Api__Auth__AnonymousPaths", "/healthz,/metrics"),
        ],
    )
    .expect("valid");
    let scopes: Vec<usize> = cfg.api.auth.tokens.iter().map(|t| t.scopes.len()).collect();
    assert_eq!(scopes, [1, 2], "ops, shop");
    assert_eq!(cfg.api.auth.anonymous_paths, ["/healthz", "/metrics"]);
}

#[test]
fn lists_from_env_may_be_json_arrays_or_indexed() {
    let cfg = load(
        "[Api.Auth.Tokens.shop]\nScopes = [\"admin\"]\n",
        "toml",
        &[
            ("Api__Auth__Tokens__shop__Token", TOKEN),
            (
                "Api__Auth__Tokens__shop__Scopes",
                r#"["orders:read", "orders:write"]"#,
            ),
            ("Api__Auth__AnonymousPaths", r#"["/healthz"]"#),
            // ASP.NET's own form: one variable per item.
            ("Api__Auth__Tokens__ops__Token", TOKEN),
            ("Api__Auth__Tokens__ops__Scopes__1", "orders:write"),
            ("Api__Auth__Tokens__ops__Scopes__0", "admin"),
        ],
    )
    .expect("valid");
    let tokens = &cfg.api.auth.tokens;
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ops", "shop"]);
    assert_eq!(format!("{:?}", tokens[0].scopes), "[Admin, OrdersWrite]");
    assert_eq!(
        format!("{:?}", tokens[1].scopes),
        "[OrdersRead, OrdersWrite]"
    );
    assert_eq!(cfg.api.auth.anonymous_paths, ["/healthz"]);
}

#[test]
fn text_keys_from_env_stay_text() {
    let cfg = load(
        "",
        "toml",
        &[
            ("KafkaConfiguration__Orders__TopicName", "123"),
            ("Admin__Enabled", "True"),
        ],
    )
    .expect("valid");
    assert_eq!(cfg.kafka.orders.name, "123");
    assert!(cfg.admin.enabled);
}

#[test]
fn wrong_types_name_key_source_and_what_is_expected() {
    let err = message(load(
        "",
        "toml",
        &[("Api__Auth__Tokens__shop__Scopes", "[orders:read")],
    ));
    assert_eq!(
        err,
        "Api.Auth.Tokens.shop.Scopes: expected a list, comma-separated (`a,b`) or a JSON \
         array (`[\"a\",\"b\"]`) (environment variable Api__Auth__Tokens__shop__Scopes)"
    );

    let err = message(load("[Api.Auth.Tokens.shop]\nScopes = 5\n", "toml", &[]));
    assert_eq!(
        err,
        "Api.Auth.Tokens.shop.Scopes: expected a list, comma-separated (`a,b`) or a JSON \
         array (`[\"a\",\"b\"]`), found a number (config.toml)"
    );

    let err = message(load("", "toml", &[("Database__MaxConnections", "ten")]));
    assert_eq!(
        err,
        "Database.MaxConnections: expected a whole number from 0 to 4294967295, found \"ten\" \
         (environment variable Database__MaxConnections)"
    );

    let err = message(load("[Admin]\nEnabled = \"maybe\"\n", "toml", &[]));
    assert_eq!(
        err,
        "Admin.Enabled: expected true or false, found \"maybe\" (config.toml)"
    );

    let err = message(load("", "toml", &[("KafkaConfiguration__Orders", "5")]));
    assert_eq!(
        err,
        "KafkaConfiguration.Orders: expected a section of keys, found a number \
         (environment variable KafkaConfiguration__Orders)"
    );

    let err = message(load(
        "[Api.Auth.Tokens.shop]\nScopes = [\"admin\", 1]\n",
        "toml",
        &[],
    ));
    assert_eq!(
        err,
        "Api.Auth.Tokens.shop.Scopes: expected a list, comma-separated (`a,b`) or a JSON \
         array (`[\"a\",\"b\"]`); item 1 is a number (config.toml)"
    );

    // A text key may hold a credential: its value is never repeated.
    let err = message(load(
        "[KafkaConfiguration.Security]\nPassword = 987654321\n",
        "toml",
        &[],
    ));
    assert_eq!(
        err,
        "KafkaConfiguration.Security.Password: expected text, found a number (config.toml)"
    );
}

#[test]
fn the_dashboard_history_keeps_a_bounded_window() {
    let cfg = load("", "toml", &[]).expect("defaults");
    // Fifteen minutes at five seconds.
    assert_eq!(
        (cfg.admin.history_interval, cfg.admin.history_points),
        (std::time::Duration::from_secs(5), 180)
    );
    let cfg = load(
        "[Admin]\nHistoryIntervalMs = 400\nHistorySeconds = 3\n",
        "toml",
        &[],
    )
    .expect("valid");
    assert_eq!(cfg.admin.history_points, 8);

    let err = message(load("", "toml", &[("Admin__HistorySeconds", "5")]));
    assert_eq!(
        err,
        "Admin.HistorySeconds: is 5, must cover at least two samples of \
         Admin.HistoryIntervalMs (5000 ms) (environment variable Admin__HistorySeconds)"
    );
    let err = message(load(
        "[Admin]\nHistoryIntervalMs = 100\nHistorySeconds = 86400\n",
        "toml",
        &[],
    ));
    assert!(
        err.starts_with("Admin.HistorySeconds: is 86400, 864000 samples of 100 ms"),
        "{err}"
    );
}
