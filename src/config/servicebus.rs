//! The Service Bus connection string, as the Azure portal hands it out.

use crate::secret::Secret;

/// A parsed Service Bus connection string. Debug never shows the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBusConnection {
    pub host: String,
    pub port: Option<u16>,
    pub key_name: String,
    pub key: Secret,
    /// `UseDevelopmentEmulator=true`: plain AMQP, no TLS.
    pub emulator: bool,
}

impl ServiceBusConnection {
    /// `Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=...;
    /// SharedAccessKey=...[;UseDevelopmentEmulator=true]`. Errors name the
    /// missing or bad part and never echo the key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        let mut emulator = false;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!(
                    "part {:?} is not Name=Value",
                    part.split('=').next().unwrap_or("")
                ));
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_string()),
                "sharedaccesskeyname" => key_name = Some(value.trim().to_string()),
                // The key is base64 and may itself end in '='.
                "sharedaccesskey" => key = Some(Secret::new(value.trim())),
                "usedevelopmentemulator" => emulator = value.trim().eq_ignore_ascii_case("true"),
                "entitypath" => {}
                other => return Err(format!("unknown part {other:?}")),
            }
        }
        let endpoint = endpoint
            .filter(|e| !e.is_empty())
            .ok_or("missing Endpoint (Endpoint=sb://<namespace>.servicebus.windows.net/)")?;
        let address = endpoint
            .strip_prefix("sb://")
            .ok_or("Endpoint must start with sb://")?
            .trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("Endpoint port {p:?} is not a number"))?,
                ),
            ),
            None => (address.to_string(), None),
        };
        if host.is_empty() {
            return Err("Endpoint has no host".into());
        }
        let key_name = key_name
            .filter(|k| !k.is_empty())
            .ok_or("missing SharedAccessKeyName")?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or("missing SharedAccessKey")?;
        Ok(Self {
            host,
            port,
            key_name,
            key,
            emulator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_bus_connection_strings_parse_and_name_missing_parts() {
        let c = ServiceBusConnection::parse(
            "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc==",
        )
        .expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.key.expose()),
            ("shop.servicebus.windows.net", None, "abc==")
        );
        assert!(!c.emulator);
        assert!(!format!("{c:?}").contains("abc=="));
        let e = ServiceBusConnection::parse(
            "Endpoint=sb://localhost:5673;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true",
        )
        .expect("emulator");
        assert_eq!((e.port, e.emulator), (Some(5673), true));
        for (raw, missing) in [
            ("SharedAccessKeyName=k;SharedAccessKey=v", "Endpoint"),
            ("Endpoint=sb://x/;SharedAccessKey=v", "SharedAccessKeyName"),
            ("Endpoint=sb://x/;SharedAccessKeyName=k", "SharedAccessKey"),
        ] {
            let err = ServiceBusConnection::parse(raw).expect_err(missing);
            assert!(err.contains(missing), "{err}");
        }
    }
}
