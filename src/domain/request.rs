//! The request body of `POST /api/orders` and its parsing into a
//! [`NewOrder`]: every field checked, every problem reported at once.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::text;
use super::{
    FieldError, NewItem, NewOrder, OrderLimits, MAX_EMAIL_LEN, MAX_NAME_LEN, MAX_QUANTITY,
    MAX_UNIT_PRICE, MONEY_SCALE,
};

/// The request body of `POST /api/orders`, as sent; [`CreateOrderRequest::parse`]
/// turns it into a [`NewOrder`] or the list of field errors.
// The schema states exactly what `parse` accepts (lengths count the raw
// text, surrounding whitespace is trimmed; the patterns spell out Rust's
// `char::is_whitespace` and `char::is_control`), so a schema-valid request
// is never refused with 400 and a schema-invalid one never accepted.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrderRequest {
    #[schema(required = true, schema_with = text::customer_name_schema)]
    pub customer_name: Option<String>,
    /// One `@`, a dotted domain, no whitespace inside.
    #[schema(
        required = true,
        nullable = false,
        max_length = 254,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+@[^.@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*\.[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^.@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$",
        example = "ada@example.com"
    )]
    pub customer_email: Option<String>,
    #[schema(max_length = 200)]
    pub customer_id: Option<String>,
    /// At least one; at most `Api.MaxItemsPerOrder` (100 by default).
    #[schema(required = true, nullable = false, min_items = 1, max_items = 100)]
    pub items: Option<Vec<CreateItemRequest>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateItemRequest {
    #[schema(required = true, schema_with = text::product_name_schema)]
    pub product_name: Option<String>,
    #[schema(required = true, nullable = false, minimum = 1, maximum = 1_000_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub quantity: Option<i64>,
    /// An exact decimal with at most two places, 0..=1000000000: a string
    /// such as `"4.25"`, or a JSON number.
    #[schema(required = true, schema_with = price_schema)]
    #[serde(default, deserialize_with = "price")]
    pub unit_price: Option<Decimal>,
}

/// A price as text: no sign, exponent, separators or leading zeros, at
/// most two decimal places, at most `MAX_UNIT_PRICE`.
pub const PRICE_PATTERN: &str =
    r"^(?:(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,2})?|1000000000(?:\.00?)?)$";

fn price_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(PRICE_PATTERN))
        .examples(["4.25"]);
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(0))
        .maximum(Some(1_000_000_000))
        .multiple_of(Some(0.01));
    OneOfBuilder::new()
        .item(text)
        .item(number)
        .description(Some(
            "An exact decimal with at most two places, 0..=1000000000: a string such as \"4.25\", or a JSON number",
        ))
        .into()
}

/// Text prices are read strictly (the grammar of [`PRICE_PATTERN`] up to
/// the range, which `parse` checks), so what the schema calls invalid is
/// refused; numbers go through their shortest decimal spelling, which is
/// what the client wrote for any number a double holds exactly enough.
fn price<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Decimal>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a decimal with at most two places, as a string or a number")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Decimal::from(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Decimal::from(v)))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Decimal::from_str(&v.to_string()).map(Some).map_err(|_| {
                E::custom("is not a price: at most two decimal places, 0..=1000000000")
            })
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if !is_price_text(v) {
                return Err(E::custom(
                    "is not a price: digits with at most two decimal places, like \"4.25\"",
                ));
            }
            Decimal::from_str(v)
                .map(Some)
                .map_err(|_| E::custom("is not a price"))
        }
    }
    d.deserialize_option(Visitor)
}

/// An integer as JSON Schema means it: `3` and `3.0` alike (JSON has one
/// number type, and some clients write every number with a point).
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2^63 as f64 is exactly i64::MAX + 1, the first value too large.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                Ok(Some(v as i64))
            } else {
                Err(E::custom(format!("{v} is not an integer in range")))
            }
        }
    }
    d.deserialize_option(Visitor)
}

/// Digits (no leading zero, at most ten), then optionally `.` and one or
/// two digits.
fn is_price_text(text: &str) -> bool {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole)
        && whole.len() <= 10
        && (whole == "0" || !whole.starts_with('0'))
        && fraction.is_none_or(|f| digits(f) && f.len() <= 2)
}

impl CreateOrderRequest {
    pub fn parse(self, limits: OrderLimits) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let customer_name = required_text(
            &mut errors,
            "customerName",
            self.customer_name,
            MAX_NAME_LEN,
        );
        let customer_email = required_text(
            &mut errors,
            "customerEmail",
            self.customer_email,
            MAX_EMAIL_LEN,
        );
        if let Some(email) = &customer_email {
            if !is_plausible_email(email) {
                errors.push(FieldError::new("customerEmail", "is not an email address"));
            }
        }
        let customer_id = match self.customer_id {
            Some(id) if id.chars().count() > MAX_NAME_LEN => {
                errors.push(FieldError::new(
                    "customerId",
                    format!("is longer than {MAX_NAME_LEN} characters"),
                ));
                None
            }
            Some(id) if id.trim().is_empty() => None,
            other => other.map(|id| id.trim().to_string()),
        };
        let raw_items = self.items.unwrap_or_default();
        if raw_items.is_empty() {
            errors.push(FieldError::new("items", "must hold at least one item"));
        } else if raw_items.len() > limits.max_items {
            errors.push(FieldError::new(
                "items",
                format!(
                    "holds {} items, at most {} allowed",
                    raw_items.len(),
                    limits.max_items
                ),
            ));
        }
        let mut items = Vec::with_capacity(raw_items.len());
        for (i, item) in raw_items.into_iter().enumerate() {
            if let Some(item) = item.parse(i, &mut errors) {
                items.push(item);
            }
        }
        match (customer_name, customer_email) {
            (Some(customer_name), Some(customer_email)) if errors.is_empty() => Ok(NewOrder {
                customer_name,
                customer_email,
                customer_id,
                items,
            }),
            _ => Err(errors),
        }
    }
}

impl CreateItemRequest {
    /// Item `i` as a [`NewItem`], or `None` with its problems added to
    /// `errors`.
    fn parse(self, i: usize, errors: &mut Vec<FieldError>) -> Option<NewItem> {
        let at = |f: &str| format!("items[{i}].{f}");
        let product_name =
            required_text(errors, &at("productName"), self.product_name, MAX_NAME_LEN);
        let quantity = match self.quantity {
            None => {
                errors.push(FieldError::new(at("quantity"), "is required"));
                None
            }
            Some(q) if !(1..=MAX_QUANTITY).contains(&q) => {
                errors.push(FieldError::new(
                    at("quantity"),
                    format!("is {q}, must be 1..={MAX_QUANTITY}"),
                ));
                None
            }
            Some(q) => Some(q),
        };
        let unit_price = match self.unit_price {
            None => {
                errors.push(FieldError::new(at("unitPrice"), "is required"));
                None
            }
            Some(p) if p.is_sign_negative() && !p.is_zero() => {
                errors.push(FieldError::new(at("unitPrice"), "must not be negative"));
                None
            }
            Some(p) if p > MAX_UNIT_PRICE => {
                errors.push(FieldError::new(
                    at("unitPrice"),
                    format!("must not exceed {MAX_UNIT_PRICE}"),
                ));
                None
            }
            Some(p) if p.normalize().scale() > MONEY_SCALE => {
                errors.push(FieldError::new(
                    at("unitPrice"),
                    format!("has more than {MONEY_SCALE} decimal places"),
                ));
                None
            }
            Some(mut p) => {
                p.rescale(MONEY_SCALE);
                Some(p)
            }
        };
        Some(NewItem {
            product_name: product_name?,
            quantity: quantity?,
            unit_price: unit_price?,
        })
    }
}

fn required_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max_len: usize,
) -> Option<String> {
    let raw = value.unwrap_or_default();
    // The raw length counts, as the schema's maxLength does: trimming first
    // would accept text the schema calls too long.
    let too_long = raw.chars().count() > max_len;
    let value = raw.trim().to_string();
    if value.is_empty() {
        errors.push(FieldError::new(field, "is required"));
        None
    } else if too_long {
        errors.push(FieldError::new(
            field,
            format!("is longer than {max_len} characters"),
        ));
        None
    } else if !text::is_printable(&value) {
        errors.push(FieldError::new(field, "contains control characters"));
        None
    } else {
        Some(value)
    }
}

/// Deliberately loose (RFC 5322 is not worth enforcing at an order API): one
/// `@`, a non-empty local part, a dotted domain, no whitespace.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderLimits;

    fn request(json: serde_json::Value) -> CreateOrderRequest {
        serde_json::from_value(json).expect("request shape")
    }

    const LIMITS: OrderLimits = OrderLimits { max_items: 3 };

    #[test]
    fn valid_order_has_exact_total() {
        let order = request(serde_json::json!({
            "customerName": " Ada ", "customerEmail": "ada@example.com",
            "items": [{"productName": "pen", "quantity": 3, "unitPrice": 0.1},
                      {"productName": "ink", "quantity": 1, "unitPrice": "19.99"}]
        }))
        .parse(LIMITS)
        .expect("valid");
        assert_eq!(order.customer_name, "Ada");
        assert_eq!(order.total().to_string(), "20.29");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = request(serde_json::json!({
            "customerName": "", "customerEmail": "nope",
            "items": [{"productName": "pen", "quantity": -1, "unitPrice": 1.001}]
        }))
        .parse(LIMITS)
        .expect_err("invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customerName",
                "customerEmail",
                "items[0].quantity",
                "items[0].unitPrice"
            ]
        );
    }

    #[test]
    fn text_prices_are_read_as_the_schema_pattern_spells_them() {
        let price = |v: serde_json::Value| {
            serde_json::from_value::<CreateItemRequest>(serde_json::json!({"unitPrice": v}))
                .map(|i| i.unit_price)
        };
        for ok in ["0", "4.25", "4.2", "999999999.99", "1000000000.00"] {
            assert!(price(ok.into()).is_ok(), "{ok}");
        }
        for bad in [
            "", "-1", "+1", "1e3", ".5", "5.", "007", "1_000", " 1", "1.001",
        ] {
            assert!(price(bad.into()).is_err(), "{bad:?}");
        }
        // Integral floats are integers, as in JSON Schema.
        let item: CreateItemRequest =
            serde_json::from_value(serde_json::json!({"quantity": 3.0, "unitPrice": 4.25}))
                .expect("item");
        assert_eq!(item.quantity, Some(3));
        assert_eq!(item.unit_price.map(|p| p.to_string()), Some("4.25".into()));
    }
}
